"""sa2va_ray.tune."""
