"""Where a kernel function runs: the one dispatch rule of :mod:`slimgraph.kernels` and the switches it reads.

* CUDA tensors                                  -> the Triton kernel (autotuned over the op's bucket configs);
* CPU tensors and ``TRITON_INTERPRET=1`` set     -> the same Triton kernel under Triton's interpreter (CI);
* CPU tensors otherwise (or any other device)    -> the function's pure-torch reference, so graphs run anywhere.

Both switches are read at *call* time, not import time: the kernel tests turn the interpreter on per test, and a
script may set ``SLIMGRAPH_AUTOTUNE`` after ``import slimgraph``. How a kernel compiled for the GPU still runs
under the interpreter is :mod:`.interpreter`'s job.
"""

from __future__ import annotations

import os

import torch

__all__ = ["AUTOTUNE_ENV", "INTERPRET_ENV", "autotune_enabled", "env_flag", "interpreter_requested", "use_triton"]

INTERPRET_ENV = "TRITON_INTERPRET"
# SLIMGRAPH_AUTOTUNE=0 skips autotuning on the GPU and runs each bucket's first (default) config: quick start-up
# for tests and short scripts; benchmarks and serving should keep autotuning on.
AUTOTUNE_ENV = "SLIMGRAPH_AUTOTUNE"

_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str, default: bool) -> bool:
    """A boolean environment switch, parsed like Triton parses its own ("1", "true", "yes", "on")."""
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in _TRUE


def interpreter_requested() -> bool:
    """``TRITON_INTERPRET`` is set now."""
    return env_flag(INTERPRET_ENV, False)


def autotune_enabled() -> bool:
    """Autotune over a bucket's configs (default) rather than run its first config (``SLIMGRAPH_AUTOTUNE=0``)."""
    return env_flag(AUTOTUNE_ENV, True)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """The dispatch rule above, for the device of the first tensor given (callers check devices agree)."""
    device = next(t.device for t in tensors if t is not None)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_requested()
