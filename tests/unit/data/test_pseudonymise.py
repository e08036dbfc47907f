"""Pseudonymisation: stable per salt, hides names and ids, keeps the rest of the file name."""

from __future__ import annotations

import pandas as pd
import pytest

from sa2va_ray.data.pseudonymise import pseudonymise_column, pseudonymise_name, pseudonymise_text

NAME = "An_Cong_Xue(0000932433)_1-3_1_051C3E6A_frame_000011.jpg"


def test_hides_name_and_id_and_keeps_frame():
    alias = pseudonymise_name(NAME, "salt")
    assert "An_Cong_Xue" not in alias and "0000932433" not in alias
    assert alias.startswith("patient-") and alias.endswith("_1-3_1_051C3E6A_frame_000011.jpg")


def test_stable_per_salt_and_patient():
    other_frame = NAME.replace("000011", "000012")
    spaced = NAME.replace("_", " ", 2)  # same patient id written with spaces in the name
    a = pseudonymise_name(NAME, "salt").split("_")[0]
    assert pseudonymise_name(other_frame, "salt").split("_")[0] == a
    assert pseudonymise_name(spaced, "salt").split("_")[0] == a
    assert pseudonymise_name(NAME, "pepper").split("_")[0] != a
    other_patient = NAME.replace("0000932433", "0000932434")
    assert pseudonymise_name(other_patient, "salt").split("_")[0] != a


def test_unmatched_names_are_hashed_whole():
    alias = pseudonymise_name("dir/Zhang_San_frame_1.jpg", "salt")
    assert alias.startswith("dir/file-") and alias.endswith(".jpg") and "Zhang" not in alias


def test_text_and_dataframe_helpers():
    line = f"record 3 /data/images/{NAME}: empty mask"
    out = pseudonymise_text(line, "salt")
    assert out.startswith("record 3 /data/images/patient-") and "0000932433" not in out
    df = pd.DataFrame({"image": [NAME, None], "iou": [0.5, 0.7]})
    got = pseudonymise_column(df, "image", "salt")
    assert got["image"][0] == pseudonymise_name(NAME, "salt") and pd.isna(got["image"][1])
    assert df["image"][0] == NAME  # input untouched


def test_empty_salt_refused():
    with pytest.raises(ValueError, match="salt"):
        pseudonymise_name(NAME, "")
