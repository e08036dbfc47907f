"""Package-level contracts: `import sa2va_ray` is enough for transformers' AutoModel to load a saved model."""

import subprocess
import sys


def test_automodel_after_import_sa2va_ray(tmp_path):
    from sa2va_ray.model import build_tiny_sa2va

    build_tiny_sa2va(seed=3).save_pretrained(str(tmp_path))
    code = (
        "import sa2va_ray, transformers, sys\n"
        f"m = transformers.AutoModel.from_pretrained(r'{tmp_path}')\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("Sa2VAModel")
