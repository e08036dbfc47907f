"""With ``data.pseudonymise=true`` no patient name or id, and never the salt, reaches a file, file name or log line.

The run-level test prepares the data as every job does (validation, patient split, split files, config.yaml) on a
synthetic set with a missing image and a file name the patient regex cannot parse, then greps everything it wrote
and logged; the worker-level test builds a decode error as a training worker does and hides it with its table.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from sa2va_ray.cli import parse_job_args
from sa2va_ray.config import ConfigError, config_to_dict, load_config, save_config
from sa2va_ray.data.pseudonymise import (
    SALT_ENV,
    Pseudonymiser,
    hide_names,
    install_log_pseudonymiser,
    load_salt,
)
from sa2va_ray.data.synthetic import generate_synthetic_set

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "configs" / "demo.yaml"
SALT = "unit-test-secret-salt-5f3a9c"
GHOST = "Ghost_Patient(0000000099)_1-1_1_0000000A_frame_000001.jpg"  # missing image: a validation warning quotes it
UNPARSED = "Zhang_San_frame_000001.jpg"  # no "(id)": the split warns with the raw name


@pytest.fixture(autouse=True)
def no_log_hook():
    yield
    install_log_pseudonymiser(None)


@pytest.fixture
def salt_file(tmp_path) -> Path:
    path = tmp_path / "secret" / "salt.txt"
    path.parent.mkdir()
    path.write_text(SALT + "\n")
    return path


def test_salt_comes_from_a_file_or_the_environment(salt_file):
    assert load_salt(str(salt_file), environ={}) == SALT
    assert load_salt("", environ={SALT_ENV: f"  {SALT} "}) == SALT


@pytest.mark.parametrize("env, file_text, problem", [
    ({}, None, f"needs a secret salt: set {SALT_ENV} or data.salt_file"),
    ({SALT_ENV: "sa2va-ray"}, None, "public default salt"),
    ({}, "sa2va-ray\n", "public default salt"),
    ({SALT_ENV: "short"}, None, "the salt has 5 characters"),
    ({}, "", "the salt has 0 characters"),
])
def test_missing_public_or_weak_salt_is_one_line(env, file_text, problem, tmp_path):
    path = ""
    if file_text is not None:
        path = str(tmp_path / "salt.txt")
        Path(path).write_text(file_text)
    with pytest.raises(ConfigError, match=re.escape(problem)) as e:
        load_salt(path, environ=env)
    assert "\n" not in str(e.value)


def test_salt_in_a_config_is_refused_without_echoing_it():
    with pytest.raises(ConfigError, match="data.salt_file=FILE or SA2VA_SALT") as e:
        load_config(DEMO, [f"data.salt={SALT}"])
    assert SALT not in str(e.value)


def test_job_exits_2_before_any_work_without_a_salt(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        parse_job_args("t", ["--config", str(DEMO), f"output_dir={tmp_path / 'run'}", "data.pseudonymise=true"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: data.pseudonymise=true needs a secret salt") and "\n" not in err


def test_every_log_record_is_pseudonymised_traceback_included(caplog):
    pz = Pseudonymiser(SALT, names=[UNPARSED])
    install_log_pseudonymiser(pz.text)
    log = logging.getLogger("sa2va_ray.some.module")
    with caplog.at_level(logging.INFO):
        log.warning("record %d (%s): missing; also %s", 3, GHOST, UNPARSED)
        try:
            raise FileNotFoundError(f"/data/images/{GHOST}")
        except FileNotFoundError:
            log.exception("cannot decode")
    text = caplog.text
    assert "Ghost_Patient" not in text and "0000000099" not in text and "Zhang_San" not in text
    assert pz.name(GHOST) in text and pz.name(UNPARSED) in text and "FileNotFoundError" in text


@pytest.fixture
def dataset(tmp_path) -> Path:
    ann = generate_synthetic_set(tmp_path / "data", patients=4, frames=2, size=64, seed=3)
    records = json.loads(ann.read_text())
    shutil.copy(ann.parent / "images" / records[0]["image"], ann.parent / "images" / UNPARSED)
    records += [{**records[0], "image": UNPARSED}, {**records[1], "image": GHOST}]
    ann.write_text(json.dumps(records))
    return ann


def test_prepared_run_writes_and_logs_no_identity_and_no_salt(dataset, salt_file, tmp_path, caplog, capsys):
    from sa2va_ray.data.prepare import prepare_splits

    raw = [r["image"] for r in json.loads(dataset.read_text())]
    secrets = {SALT} | {n.split("(")[0] for n in raw if "(" in n} | set(re.findall(r"\((\d+)\)", " ".join(raw)))
    secrets |= {"Zhang_San"}
    out = tmp_path / "run"
    cfg = load_config(DEMO, [f"output_dir={out}", f"data.annotations={dataset}",
                             f"data.images_dir={dataset.parent / 'images'}", "data.pseudonymise=true",
                             f"data.salt_file={salt_file}", "data.synthetic.enabled=false"]).resolve_paths()
    save_config(cfg, command="python jobs/train.py --config configs/demo.yaml data.pseudonymise=true")
    with caplog.at_level(logging.INFO):
        splits = prepare_splits(cfg)
    logged = caplog.text + "".join(capsys.readouterr())
    assert "missing_image" in logged or "excluded" in logged  # the warnings are there, pseudonymised
    split_images = [r["image"] for f in ("train", "val") for r in json.loads((out / "split" / f"{f}.json").read_text())]
    assert len(split_images) == len(raw) - 1 and all(n.startswith(("patient-", "file-")) for n in split_images)
    assert set(splits.aliases) == {s.image for s in (*splits.train, *splits.val)}
    written = {str(p.relative_to(out)): p.read_bytes().decode() for p in out.rglob("*") if p.is_file()}
    for secret in secrets:
        assert secret not in logged, f"{secret!r} in a log line"
        leaks = [name for name, text in written.items() if secret in name or secret in text]
        assert not leaks, f"{secret!r} written in {leaks}"
        assert secret not in json.dumps(config_to_dict(cfg))  # what workers and Tune trials receive
        assert all(secret not in alias for alias in splits.aliases.values())


def test_worker_decode_error_quotes_pseudonyms_only(dataset, tmp_path):
    from sa2va_ray.data.annotations import Sample
    from sa2va_ray.train.stream import decode_batch

    images = dataset.parent / "images"
    rec = json.loads(dataset.read_text())[0]
    samples = [Sample(index=0, image=GHOST, texts=["vessel"], masks=[rec["mask"][0]])]
    _, errors = decode_batch({"sample": np.array([0]), "text": np.array([0])}, samples, str(images))
    assert errors and GHOST in errors[0]  # what a worker would log without the table
    aliases = Pseudonymiser(SALT, names=[GHOST]).aliases
    hidden = hide_names(errors[0], aliases)
    assert "Ghost_Patient" not in hidden and "0000000099" not in hidden and aliases[GHOST] in hidden


def test_worker_error_with_a_raw_name_is_replaced_by_a_pseudonymised_one():
    from sa2va_ray.data.pseudonymise import hide_exception

    aliases = Pseudonymiser(SALT, names=[GHOST]).aliases
    try:
        open(f"/nonexistent/{GHOST}")
    except FileNotFoundError as e:
        hidden = hide_exception(e, aliases)
    assert isinstance(hidden, RuntimeError) and "FileNotFoundError" in str(hidden)
    assert "Ghost_Patient" not in str(hidden) and aliases[GHOST] in str(hidden)
    plain = ValueError("train.lr must be > 0")
    assert hide_exception(plain, aliases) is plain  # nothing to hide: the error keeps its type
