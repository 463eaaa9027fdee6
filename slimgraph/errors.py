"""Errors raised by slimgraph.

Every error a user can trigger derives from :class:`SlimgraphError`, names the node, module or file
involved and says what to try; none of them should surface as a stack trace from deep inside torch.
"""

from __future__ import annotations


class SlimgraphError(Exception):
    """Base class of every error slimgraph raises on purpose."""


class CaptureError(SlimgraphError):
    """The model could not be captured into an fx graph."""


class InputError(SlimgraphError, ValueError):
    """Arguments of a public API call are malformed (wrong type, dtype, shape, range...)."""


class PipelineError(SlimgraphError, ValueError):
    """A pipeline string or pass option could not be parsed or names an unknown pass."""


class PassError(SlimgraphError):
    """A pass failed, produced an invalid graph, or broke numerics beyond its tolerance."""

    def __init__(self, message: str, *, pass_name: str = "", predecessors: tuple[str, ...] = ()):
        ran = " -> ".join(predecessors) if predecessors else "(none)"
        super().__init__(f"pass '{pass_name}' failed (passes before it: {ran}): {message}")
        self.pass_name = pass_name
        self.predecessors = predecessors


class VerificationError(SlimgraphError):
    """The graph violates an invariant of the slimgraph IR."""


class ArchiveError(SlimgraphError):
    """A saved model file is missing, corrupt, foreign, or cannot be written."""
