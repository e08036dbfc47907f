"""sa2va_ray.evaluate."""
