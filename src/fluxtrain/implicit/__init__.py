"""Implicit-era (Flux 0.13) parameters, gradients and training loop."""
