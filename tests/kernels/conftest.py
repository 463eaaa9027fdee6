"""Kernel tests: every test runs the Triton kernels under Triton's interpreter on CPU tensors.

TRITON_INTERPRET=1 is set per test (monkeypatch), not at import: slimgraph reads it at call time and builds
interpreter twins of kernels compiled before it was set, so the variable never leaks into other test files that
run in the same process (their CPU graphs keep using the fast torch references). Outputs allocated with
torch.empty are poisoned (NaN / max int) so an element a kernel forgets to write cannot pass by luck.
"""

import warnings

import pytest
import torch

from slimgraph.kernels.dispatch import INTERPRET_ENV


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    monkeypatch.setenv(INTERPRET_ENV, "1")
    monkeypatch.delenv("SLIMGRAPH_AUTOTUNE", raising=False)
    # tl.sigmoid(y) = 1 / (1 + exp(-y)) overflows to inf for y << 0 and correctly gives 0, on the GPU silently and
    # in the interpreter's numpy with a RuntimeWarning.
    warnings.filterwarnings("ignore", "overflow encountered in exp", RuntimeWarning)
    yield


@pytest.fixture(autouse=True)
def poisoned_empty():
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.utils.deterministic.fill_uninitialized_memory = was_filling
    torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
