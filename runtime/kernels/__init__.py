"""Triton GPU kernels for the runtime (imported lazily; needs torch + triton)."""
