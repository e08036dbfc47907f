"""Other annotation formats into the official Sa2VA format: ``python -m sa2va_ray.data.convert --from
labelme|coco|masks --input PATH --images DIR --out DIR`` (see :mod:`~sa2va_ray.data.convert.__main__`).

Modules: :mod:`~.labelme`, :mod:`~.coco`, :mod:`~.masks` (readers), :mod:`~.trace` (mask -> polygons, IoU-checked
with the project's rasteriser), :mod:`~.common` (text mapping, size checks, records, writing), :mod:`~.report`,
:mod:`~.pipeline` (:func:`~.pipeline.convert_annotations`: read, write, validate) and :mod:`~.roundtrip` (the
synthetic set written as LabelMe files and converted back, as the demo does). Nothing is imported here, so the CLI
starts fast (no torch, transformers or ray).
"""
