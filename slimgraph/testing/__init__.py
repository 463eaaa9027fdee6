"""Helpers shared by tests and benchmarks: a zoo of small real-architecture models."""

from .models import ZOO, ModelCase, make

__all__ = ["ZOO", "ModelCase", "make"]
