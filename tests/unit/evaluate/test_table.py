"""The evaluation table module: missing rows, the patient column, pseudonymisation through one pseudonymiser;
overlays decode each selected record once."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.patients import group_id
from sa2va_ray.data.pseudonymise import Pseudonymiser, hash_identifier, pseudonymise_name
from sa2va_ray.evaluate import overlays
from sa2va_ray.evaluate.table import OUTPUT_COLUMNS, empty_row, finish_table, mark_error, missing_rows

SALT = "table-test-salt-0123456789"
NAMES = ["Zhang_San(0000932433)_1-3_1_051C3E6A_frame_000011.jpg", "Li_Si(0000000777)_1-1_1_0000000A_frame_000002.jpg"]


def _samples() -> list[Sample]:
    square = [[[2, 2, 10, 2, 10, 10, 2, 10]]]
    return [Sample(index=0, image=NAMES[0], texts=["vessel", "aorta"], masks=square * 2),
            Sample(index=1, image=NAMES[1], texts=["vessel"], masks=square)]


def test_missing_rows_are_added_once_and_duplicates_dropped():
    first = pd.DataFrame([empty_row("0:0", 0, 0, NAMES[0], "vessel")] * 2)
    table, missing = missing_rows(first, _samples())
    assert missing == ["0:1", "1:0"] and list(table["sample_id"]) == ["0:0", "0:1", "1:0"]
    assert list(table["error_code"]) == ["", "pipeline_error", "pipeline_error"]


def test_finish_table_adds_patients_and_pseudonymises_every_identifier():
    rows = [empty_row("1:0", 1, 0, NAMES[1], "vessel"),
            mark_error(empty_row("0:0", 0, 0, NAMES[0], "vessel"), "decode_error", f"cannot read {NAMES[0]}")]
    plain = finish_table([pd.DataFrame(rows)], group_id)
    assert list(plain["sample_id"]) == ["0:0", "1:0"] and list(plain["patient"]) == ["0000932433", "0000000777"]
    assert list(plain.columns[:5]) == ["sample_id", "record_index", "text_index", "image", "patient"]
    assert set(OUTPUT_COLUMNS) <= set(plain.columns)
    pz = Pseudonymiser(SALT, names=NAMES)
    hidden = finish_table([pd.DataFrame(rows)], group_id, pz)
    assert list(hidden["image"]) == [pseudonymise_name(n, SALT) for n in NAMES]
    assert list(hidden["patient"]) == [f"patient-{hash_identifier(p, SALT)}" for p in ("0000932433", "0000000777")]
    assert "0000932433" not in hidden.to_csv() and "Zhang_San" not in hidden.to_csv()


def test_overlay_loader_decodes_a_record_picked_twice_once(monkeypatch):
    calls = []

    def fake_decode(sample, images_dir, allow_symlinks_outside=False):
        calls.append(sample.index)
        return {"image": np.zeros((4, 4, 3), np.uint8), "masks": np.zeros((len(sample.texts), 4, 4), bool)}

    import sa2va_ray.data.decode as decode

    monkeypatch.setattr(decode, "decode_sample", fake_decode)
    mask = np.zeros((4, 4), bool)
    selection = {"worst": [("0:0", 0.1, mask)], "best": [("1:0", 0.9, mask)], "random": [("0:1", 0.5, mask)]}
    load = overlays.record_loader(_samples(), "/nowhere", selection, lambda n: "shown.jpg")
    for sid in ("0:0", "1:0", "0:1"):
        assert load(sid)[2] == "shown.jpg"
    assert sorted(calls) == [0, 1]
