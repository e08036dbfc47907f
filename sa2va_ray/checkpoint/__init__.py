"""Checkpoint files: safety checks applied before anything reads them (see :mod:`sa2va_ray.checkpoint.safety`)."""
