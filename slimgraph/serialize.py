"""Compatibility name for :mod:`slimgraph.archive` (save/load of pickle-free, checksummed archives)."""

from .archive import FORMAT, FORMAT_VERSION, load, save

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]
