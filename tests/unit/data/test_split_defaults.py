"""The split CLI and the config agree on the default validation fraction (stated once, in data/split.py)."""

from __future__ import annotations

import json

from sa2va_ray.config import Config
from sa2va_ray.data.split import DEFAULT_VAL_FRACTION, main


def test_split_cli_default_val_fraction_is_the_configs(tmp_path, capsys):
    records = [{"image": f"P{p}(000{p})_1-1_1_A_frame_{f:06d}.jpg", "mask": [[0, 0, 4, 0, 4, 4]], "text": ["vessel"]}
               for p in range(8) for f in range(2)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    assert main(["--annotations", str(tmp_path / "a.json"), "--out", str(tmp_path / "out")]) == 0
    assert f"val fraction {Config().data.val_fraction}," in capsys.readouterr().out
    assert DEFAULT_VAL_FRACTION == Config().data.val_fraction
