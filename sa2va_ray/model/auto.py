"""Sa2VAConfig/Sa2VAModel registered with transformers' AutoConfig/AutoModel, without importing either early.

``import sa2va_ray`` calls :func:`install_auto_registration`. From then on, whatever first imports transformers'
``AutoConfig`` or ``AutoModel`` (a user's ``transformers.AutoModel.from_pretrained(dir)``, peft, our own model code)
also loads :mod:`sa2va_ray.model.sa2va` as soon as no import is half-done (else when the outermost import statement
returns), and the end of that module's import registers both classes. So ``AutoModel`` loads a
saved Sa2VA after ``import sa2va_ray``, while ``import sa2va_ray.data`` (the data CLIs) never imports torch or
transformers. Stdlib only at import time.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import sys
import threading
from collections.abc import Callable

AUTO_MODULES = ("transformers.models.auto.configuration_auto", "transformers.models.auto.modeling_auto")
MODEL_MODULE = "sa2va_ray.model.sa2va"  # defines Sa2VAModel

_state = threading.local()
_original_import = builtins.__import__
_done = False


def register_auto_classes(model_module=None) -> None:
    """Register Sa2VAConfig with AutoConfig and Sa2VAModel with AutoModel (idempotent)."""
    global _done
    from transformers import AutoConfig, AutoModel

    from sa2va_ray.model.config import Sa2VAConfig

    model_class = getattr(model_module or importlib.import_module(MODEL_MODULE), "Sa2VAModel")
    AutoConfig.register(Sa2VAConfig.model_type, Sa2VAConfig, exist_ok=True)
    AutoModel.register(Sa2VAConfig, model_class, exist_ok=True)
    _done = True
    if builtins.__import__ is _import_then_register:
        builtins.__import__ = _original_import


def _importing(but: str = "") -> bool:
    """Some module (other than ``but``) is half-imported: loading the model now could meet it half-done."""
    return any(getattr(getattr(m, "__spec__", None), "_initializing", False)
               for name, m in list(sys.modules.items()) if name != but)


def _register_when_safe(but: str = "") -> None:
    if _done or not any(name in sys.modules for name in AUTO_MODULES):
        return
    if _importing(but):  # e.g. transformers' own InternVL config imports AutoModel half-way: wait for the import
        if builtins.__import__ is not _import_then_register:
            builtins.__import__ = _import_then_register
        return
    importlib.import_module(MODEL_MODULE)  # its end registers (or it already did)
    if not _done:
        register_auto_classes()


def _import_then_register(*args, **kwargs):
    """``__import__`` while the registration waits: retried when an outermost import statement returns."""
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        return _original_import(*args, **kwargs)
    finally:
        _state.depth = depth
        if depth == 0 and not _done:
            _register_when_safe()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after a named module's code has run (a one-shot post-import hook per name)."""

    def __init__(self, hooks: dict[str, Callable]):
        self.hooks = hooks

    def find_spec(self, fullname, path, target=None):
        hook = self.hooks.pop(fullname, None)
        if hook is None:
            return None
        if not self.hooks and self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = None
        for finder in list(sys.meta_path):
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_hook(module) -> None:
            exec_module(module)
            hook(module)

        spec.loader.exec_module = exec_then_hook
        return spec


def install_auto_registration() -> None:
    """Arrange for the Auto-class registration (see the module docstring); registers at once when transformers'
    AutoModel is already imported."""
    if _done or any(isinstance(f, _AfterImport) for f in sys.meta_path) or MODEL_MODULE in sys.modules:
        return
    hooks: dict[str, Callable] = {MODEL_MODULE: register_auto_classes}
    for name in AUTO_MODULES:
        if name not in sys.modules:
            hooks[name] = lambda module: _register_when_safe(but=module.__name__)
    sys.meta_path.insert(0, _AfterImport(hooks))
    _register_when_safe()
