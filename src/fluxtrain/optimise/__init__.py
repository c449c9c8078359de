"""Stub: Flux.Optimise old optimisers (to be written, see docs/ARCHITECTURE.md)."""

__all__: list[str] = []
