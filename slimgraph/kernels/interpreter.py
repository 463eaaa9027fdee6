"""Running kernels that were compiled for the GPU under Triton's interpreter, decided per launch.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` runs, i.e. when ``triton`` (its own tl.sum, tl.max, ...)
and this package are imported. :mod:`.dispatch` reads it at *call* time instead: when a kernel was built for the
GPU but the interpreter is asked for now, the launch uses an interpreter twin of it (and of every ``@triton.jit``
function it reaches, triton.language's included). So setting the variable after ``import triton`` works too, which
lets the kernel tests switch the interpreter on per test, in any test order, without leaking it into other test
files. When ``triton`` itself was imported with the variable set, kernels already are interpreter functions and
both helpers here do nothing.
"""

from __future__ import annotations

import contextlib
import sys
import types

import triton.language as tl
from triton.runtime.jit import JITFunction

__all__ = ["interpreted_language", "interpreter_twin"]

_TWINS: dict[object, object] = {}


def interpreter_twin(kernel):
    """An interpreter version of a ``@triton.jit`` function that was compiled for the GPU at import time.

    The interpreter executes the kernel as Python, so the ``@triton.jit`` helpers it calls must be interpreter
    functions too: the twin runs with a copy of the module globals where each JITFunction is replaced by its twin.
    """
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        return kernel
    if kernel in _TWINS:
        return _TWINS[kernel]
    fn = kernel.fn
    scope = dict(fn.__globals__)
    twin_fn = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    twin_fn.__kwdefaults__ = fn.__kwdefaults__
    twin_fn.__annotations__ = dict(fn.__annotations__)
    twin_fn.__qualname__ = fn.__qualname__
    twin_fn.__module__ = fn.__module__
    twin = InterpretedFunction(twin_fn)
    _TWINS[kernel] = twin  # before recursing: kernels may reach themselves through their module's globals
    for name, value in fn.__globals__.items():
        if isinstance(value, JITFunction):
            scope[name] = interpreter_twin(value)
    return twin


@contextlib.contextmanager
def interpreted_language():
    """Make triton.language's own ``@triton.jit`` functions (tl.sum, tl.max, tl.cdiv, ...) interpretable.

    They were built as GPU JITFunctions if ``triton`` was imported before TRITON_INTERPRET was set; kernels reach
    them as attributes (``tl.sum``), so for the duration of an interpreted launch those attributes point to twins.
    """
    owners = [m for n, m in list(sys.modules.items()) if n == "triton.language" or n.startswith("triton.language.")]
    owners.append(tl.tensor)  # tensor methods such as x.sum()
    patched = []
    try:
        for owner in owners:
            for name, value in list(vars(owner).items()):
                if isinstance(value, JITFunction):
                    patched.append((owner, name, value))
                    setattr(owner, name, interpreter_twin(value))
        yield
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)
