"""Former home of the kernel plumbing, now split by job: :mod:`.dispatch` (where a kernel function runs),
:mod:`.interpreter` (GPU-compiled kernels under TRITON_INTERPRET), :mod:`.launch` (configs, autotuning, launch
counts, recording), :mod:`.tiles` (GEMM tiling), :mod:`.checks` (argument checks), :mod:`.epilogue` (activations).

Only re-exports remain, for code outside this package that still imports from here (tests/sparse); import from the
modules above instead."""

from .dispatch import AUTOTUNE_ENV, INTERPRET_ENV, interpreter_requested, use_triton  # noqa: F401
from .launch import LAUNCHES, recording_launches  # noqa: F401
