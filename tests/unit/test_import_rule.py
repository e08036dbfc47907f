"""The import rule of STYLE.md, enforced: ``model/``, the data transforms and ``evaluate/metrics`` never import ``ray``
or ``deepspeed``, and the data tools start without torch or transformers (issue 14)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import sa2va_ray

PACKAGE = Path(sa2va_ray.__file__).parent
RAY_DATA_SOURCES = {"sa2va_ray.data.ray_source"}  # the one data module that is Ray's by design

UNIMPORTABLE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("ray", "deepspeed")
    for name in BLOCKED:
        sys.modules[name] = None  # as if not installed: an import raises, a find_spec probe sees nothing


    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] in BLOCKED:
                raise ImportError(f"{fullname}: forbidden by the import rule")
            return None


    sys.meta_path.insert(0, Refuse())
    """
)


def _modules(package: str) -> list[str]:
    path = PACKAGE / package.removeprefix("sa2va_ray.").replace(".", "/")
    return sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)]) if not m.name.startswith("_"))


def _run(code: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_model_data_and_metrics_import_and_run_without_ray_or_deepspeed():
    pure = ["sa2va_ray.model", *_modules("sa2va_ray.model"), "sa2va_ray.data",
            *(m for m in _modules("sa2va_ray.data") if m not in RAY_DATA_SOURCES), "sa2va_ray.evaluate.metrics"]
    code = UNIMPORTABLE + textwrap.dedent(
        f"""
        import importlib

        import numpy as np
        from PIL import Image

        for name in {pure!r}:
            importlib.import_module(name)
        from sa2va_ray.evaluate.metrics import binary_metrics
        from sa2va_ray.model import build_tiny_sa2va

        model = build_tiny_sa2va(seed=0)
        masks = model.predict([Image.new("RGB", (40, 30))], ["blood vessel"])
        assert masks[0].shape == (30, 40)
        binary_metrics(np.stack(masks), np.stack(masks))
        assert sys.modules["ray"] is None and sys.modules["deepspeed"] is None
        print("ok")
        """
    )
    assert _run(code).stdout.strip().endswith("ok")


def test_data_tools_import_neither_torch_nor_transformers():
    code = textwrap.dedent(
        """
        import sys

        import sa2va_ray.data.split
        import sa2va_ray.data.synthetic
        import sa2va_ray.data.validate

        print(sorted(m for m in ("torch", "transformers", "ray", "deepspeed") if m in sys.modules))
        """
    )
    assert _run(code).stdout.strip() == "[]"
