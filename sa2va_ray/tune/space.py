"""Search space from YAML: ``tune.space`` maps dotted config keys to distributions.

Example (``configs/tune_demo.yaml``)::

    tune:
      search: random
      space:
        loss.mask_weight: {type: loguniform, low: 0.25, high: 4.0}
        loss.dice_weight: {type: uniform, low: 0.0, high: 2.0}
        loss.lm_weight: {type: choice, values: [0.1, 0.5, 1.0]}
        train.lr: {type: grid, values: [1.0e-4, 1.0e-3]}
"""

from __future__ import annotations

from typing import Any

from sa2va_ray.config import Config, ConfigError, config_to_dict

_TYPES = ("loguniform", "uniform", "randint", "choice", "grid", "quniform")


def _check_key(cfg: Config, key: str) -> None:
    node: Any = config_to_dict(cfg)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"tune.space: {key!r} is not a config key")
        node = node[part]


def build_search_space(cfg: Config) -> dict[str, Any]:
    """Ray Tune param space (flat dotted keys) from ``cfg.tune.space``.

    Raises:
        ConfigError: unknown config key, unknown distribution type, or missing bounds/values.
    """
    from ray import tune

    space: dict[str, Any] = {}
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: give at least one dotted key to search (e.g. loss.mask_weight)")
    for key, spec in cfg.tune.space.items():
        _check_key(cfg, key)
        if not isinstance(spec, dict) or spec.get("type") not in _TYPES:
            raise ConfigError(f"tune.space.{key}: needs {{type: one of {', '.join(_TYPES)}, ...}}, got {spec!r}")
        kind = spec["type"]
        try:
            if kind in ("choice", "grid"):
                values = list(spec["values"])
                space[key] = tune.grid_search(values) if kind == "grid" else tune.choice(values)
            elif kind == "quniform":
                space[key] = tune.quniform(float(spec["low"]), float(spec["high"]), float(spec["q"]))
            else:
                low, high = spec["low"], spec["high"]
                space[key] = getattr(tune, kind)(low, high)
        except KeyError as e:
            raise ConfigError(f"tune.space.{key}: missing {e.args[0]!r}") from None
    if cfg.tune.search == "grid" and not any(s.get("type") == "grid" for s in cfg.tune.space.values()):
        raise ConfigError("tune.search=grid needs at least one {type: grid, values: [...]} entry")
    return space
