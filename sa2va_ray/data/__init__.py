"""Vessel data layer: annotation schema and validation, rasterising, patient split, pseudonymisation,
synthetic angiography and the Ray Data source.

Modules: :mod:`~sa2va_ray.data.annotations` (format, mask/text policy, rasteriser),
:mod:`~sa2va_ray.data.images` (the one place that resolves image names and opens images),
:mod:`~sa2va_ray.data.validate`, :mod:`~sa2va_ray.data.text_rules` (the processor's text rules),
:mod:`~sa2va_ray.data.split`, :mod:`~sa2va_ray.data.pseudonymise`,
:mod:`~sa2va_ray.data.synthetic`, :mod:`~sa2va_ray.data.prepare` (what a job does first: synthetic set,
validation, patient split), :mod:`~sa2va_ray.data.decode` (pure decoding) and
:mod:`~sa2va_ray.data.ray_source` (the only one that imports Ray). Nothing is imported here, so that
``python -m sa2va_ray.data.<tool>`` runs each tool cleanly.
"""
