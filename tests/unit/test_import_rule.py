"""The import rule of STYLE.md, enforced: ``model/``, the data transforms and ``evaluate/metrics`` never import ``ray``
or ``deepspeed``, the data tools start without torch or transformers, and the packages of ``sa2va_ray`` import each
other in one direction only (issue 14)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import sa2va_ray

PACKAGE = Path(sa2va_ray.__file__).parent
RAY_DATA_SOURCES = {"sa2va_ray.data.ray_source"}  # the one data module that is Ray's by design
PACKAGE_CYCLES_ALLOWED: dict[frozenset[str], str] = {}
"""Pairs of packages allowed to import each other, each with its reason. Empty: model/ <-> checkpoint/ was the last
(the safetensors header reader is now the leaf ``model/safetensors_header.py``, re-exported by checkpoint.integrity)."""

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


def _module_imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports. Every import statement counts, lazy ones in functions too: an
    import inside a function is still a dependency, only a later one."""
    files = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = ("sa2va_ray", *file.relative_to(PACKAGE).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file

    def resolve(name: str) -> str:  # sa2va_ray.model.lora.POLICY_GROUPS -> sa2va_ray.model.lora
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, file in files.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {resolve(n) for n in names if n.startswith("sa2va_ray.")} - {module, "sa2va_ray"}
    return graph


def _package_imports() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the modules that import it (root modules such as config and cli aside)."""
    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else ""

    graph: dict[str, dict[str, list[str]]] = {}
    for module, targets in _module_imports().items():
        if src := package(module):
            graph.setdefault(src, {})
            for dst in {package(t) for t in targets} - {"", src}:
                graph[src].setdefault(dst, []).append(module)
    return graph


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the directed graph, as the path that closes it, or None."""
    done: set[str] = set()

    def circle_from(path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt in path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (circle := circle_from([*path, nxt])):
                return circle
        done.add(path[-1])
        return None

    for start in sorted(graph):
        if start not in done and (circle := circle_from([start])):
            return circle
    return None


def test_no_two_packages_import_each_other():
    graph = _package_imports()
    assert {"model", "checkpoint", "data", "train"} <= graph.keys()
    assert "model" in graph["checkpoint"]  # the scan sees imports (checkpoint.load builds models)
    found = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            if a < b and a in graph.get(b, {}) and frozenset((a, b)) not in PACKAGE_CYCLES_ALLOWED:
                found.append(f"{a} <-> {b}: {sorted(set(targets[b]))} import {b}; {sorted(set(graph[b][a]))} "
                             f"import {a}")
    assert not found, "packages importing each other:\n" + "\n".join(found)


def test_packages_form_no_longer_circle():
    """No a -> b -> c -> a either: the packages are layered (allowed pairs aside)."""
    allowed = PACKAGE_CYCLES_ALLOWED
    graph = {a: {b for b in t if frozenset((a, b)) not in allowed} for a, t in _package_imports().items()}
    circle = _find_circle(graph)
    assert circle is None, "packages import each other in a circle: " + " -> ".join(circle)


def test_no_module_import_circle():
    """Modules too, root ones included (config <- cli <- the CLIs): e.g. config must not import data.split, whose CLI
    reads its defaults from the config."""
    graph = _module_imports()
    assert "sa2va_ray.config" in graph["sa2va_ray.cli"]  # the scan sees imports
    circle = _find_circle(graph)
    assert circle is None, "modules import each other in a circle: " + " -> ".join(circle)
