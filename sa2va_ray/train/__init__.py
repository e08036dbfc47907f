"""sa2va_ray.train."""
