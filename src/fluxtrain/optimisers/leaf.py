"""Stub: to be written (see docs/ARCHITECTURE.md)."""


class Leaf:
    pass
