"""Save and load models as data: a pickle-free, checksummed archive that never runs code from the file.

An archive is one safetensors file. Its tensors are the module's parameters, buffers and constants (int8 stays
int8; with ``compress=True`` each is entropy coded). Its header holds a SHA-256 seal over the whole file and a
JSON description of the fx graph (ops by qualified name, arguments as typed JSON, input/output structures,
example inputs). :mod:`.schema` defines what a description may contain, :mod:`.container` the byte layout,
:mod:`.writer` and :mod:`.reader` the two directions. docs/security.md states what a loaded archive can do.
"""

from .reader import load
from .writer import save

FORMAT = "slimgraph"
# 2: sealed with a checksum, compact node list, strict schema. Format 1 (no checksum) is refused with advice.
FORMAT_VERSION = 2

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]
