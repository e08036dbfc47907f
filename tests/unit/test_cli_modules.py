"""Every module CLI on the one parser of ``sa2va_ray.cli`` (issue 14): ``--help`` works, a bad argument is one line
and exit 2, config flags default to the typed config's values (never restated), and the data CLIs start without
torch, transformers or Ray."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sa2va_ray.cli import CliParser, parse_job_args, parse_module_args
from sa2va_ray.config import Config

REPO = Path(__file__).resolve().parents[2]
CLIS = {  # module run with -m -> the module holding main/build_parser
    "sa2va_ray.plan": "sa2va_ray.plan.__main__",
    "sa2va_ray.export.diagnose": "sa2va_ray.export.diagnose",
    "sa2va_ray.data.synthetic": "sa2va_ray.data.synthetic",
    "sa2va_ray.data.split": "sa2va_ray.data.split",
    "sa2va_ray.data.validate": "sa2va_ray.data.validate",
    "sa2va_ray.data.convert": "sa2va_ray.data.convert.__main__",
}
DATA_CLIS = ["sa2va_ray.data.synthetic", "sa2va_ray.data.split", "sa2va_ray.data.validate", "sa2va_ray.data.convert"]
BAD_VALUES = {  # a value the config's checks (or the flag's type) refuse
    "sa2va_ray.plan": ["--config", str(REPO / "configs/demo.yaml"), "--video-size", "5y"],
    "sa2va_ray.export.diagnose": ["some/dir", "--source", "zero"],
    "sa2va_ray.data.synthetic": ["--patients", "1"],
    "sa2va_ray.data.split": ["--annotations", "a.json", "--out", "o", "--val-fraction", "1.5"],
    "sa2va_ray.data.validate": ["--annotations", "a.json", "--images", "i", "--run-regex", "(?P<run>x)"],
    "sa2va_ray.data.convert": ["--from", "labelme", "--input", "x", "--out", "o", "--min-iou", "high"],
}


def _module(cli: str):
    return importlib.import_module(CLIS[cli])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    return lines[0]


@pytest.mark.parametrize("cli", CLIS)
def test_help_works(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        _module(cli).main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {cli}") and "-q, --quiet" in out


@pytest.mark.parametrize("cli", CLIS)
def test_an_unknown_flag_is_one_line_and_exit_2(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        _module(cli).main(["--no-such-flag"])
    assert exit_.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"python -m {cli}: error:") and line.endswith("(see --help)")


@pytest.mark.parametrize("cli", CLIS)
def test_a_bad_value_is_one_line_and_exit_2(cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        _module(cli).main(BAD_VALUES[cli])
    assert exit_.value.code == 2
    _one_error_line(capsys.readouterr().err)


def _config_value(cfg: Config, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


REQUIRED = {"sa2va_ray.data.split": ["--out", "o"]}


@pytest.mark.parametrize("cli", ["sa2va_ray.export.diagnose", "sa2va_ray.data.synthetic", "sa2va_ray.data.split",
                                 "sa2va_ray.data.validate"])
def test_defaults_are_the_configs(cli):
    parser = _module(cli).build_parser()
    assert isinstance(parser, CliParser) and parser.config_keys
    args, _ = parse_module_args(parser, REQUIRED.get(cli, []))
    defaults = Config()
    for dest, key in parser.config_keys.items():
        assert getattr(args, dest) == _config_value(defaults, key), (cli, dest, key)
        assert parser.get_default(dest) is None  # the parser restates no default: it reads the config's


def test_split_defaults_follow_the_config_file_and_flags_win(tmp_path):
    """The issue's example: the split CLI's val fraction and seed are the config's, also from a config file."""
    parser = _module("sa2va_ray.data.split").build_parser()
    args, _ = parse_module_args(parser, ["--out", "o"])
    assert (args.val_fraction, args.seed) == (Config().data.val_fraction, Config().data.split_seed)
    (tmp_path / "c.yaml").write_text("data:\n  val_fraction: 0.5\n  split_seed: 3\n  strict: true\n")
    args, cfg = parse_module_args(parser, ["--config", str(tmp_path / "c.yaml"), "--out", "o"])
    assert (args.val_fraction, args.seed, args.strict) == (0.5, 3, True) == (cfg.data.val_fraction,
                                                                            cfg.data.split_seed, cfg.data.strict)
    args, _ = parse_module_args(parser, ["--config", str(tmp_path / "c.yaml"), "--out", "o", "--seed", "7"])
    assert (args.val_fraction, args.seed) == (0.5, 7)


def _records(n_patients: int, named: bool = True) -> list[dict]:
    return [{"image": f"P{p}(000{p})_1-1_1_A_frame_{f:06d}.jpg" if named else f"img{p}_frame_{f:06d}.jpg",
             "mask": [[0, 0, 4, 0, 4, 4]], "text": ["vessel"]} for p in range(n_patients) for f in range(2)]


def test_split_with_a_config_file_end_to_end(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_records(8)))
    (tmp_path / "c.yaml").write_text(f"data:\n  annotations: {tmp_path / 'a.json'}\n  val_fraction: 0.5\n"
                                     "  split_seed: 3\n")
    main = _module("sa2va_ray.data.split").main
    assert main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")]) == 0
    assert "val fraction 0.5, seed 3" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "out" / "val.json").read_text())) == 8


def test_split_strict_and_quiet(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_records(4, named=False)))
    main = _module("sa2va_ray.data.split").main
    argv = ["--annotations", str(tmp_path / "a.json"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert main([*argv, "--strict", "-q"]) == 1  # names without a patient id
    captured = capsys.readouterr()
    assert captured.out.count("split of") == 1  # -q printed nothing ...
    assert _one_error_line(captured.err).startswith("strict: 8 file name(s) without a patient id")
    print("stdout is back")  # ... and the real stdout is restored after main
    assert capsys.readouterr().out == "stdout is back\n"


def test_missing_inputs_without_a_config_are_one_line(capsys):
    for cli, argv in (("sa2va_ray.data.split", ["--out", "o"]), ("sa2va_ray.data.validate", ["--images", "i"])):
        with pytest.raises(SystemExit) as exit_:
            _module(cli).main(argv)
        assert exit_.value.code == 2
        assert "--annotations" in _one_error_line(capsys.readouterr().err)


def test_job_parser_takes_a_jobs_own_config_flag(tmp_path, capsys):
    """parse_job_args(add_arguments=...): a job's flag (jobs/export.py's --source) sets its config key, checked."""
    (tmp_path / "c.yaml").write_text(f"output_dir: {tmp_path / 'out'}\n")

    def source_flag(ap: CliParser) -> None:
        ap.add_config_argument("--source", key="export.source", help="trained tensors from")

    base = ["--config", str(tmp_path / "c.yaml")]
    assert parse_job_args("job", base, source_flag)[0].export.source == Config().export.source
    assert parse_job_args("job", [*base, "--source", "deepspeed"], source_flag)[0].export.source == "deepspeed"
    for argv in ([*base, "--source", "zero"], [*base, "--no-such-flag"]):
        with pytest.raises(SystemExit) as exit_:
            parse_job_args("job", argv, source_flag)
        assert exit_.value.code == 2
        _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("cli", DATA_CLIS)
def test_data_clis_start_without_torch_transformers_or_ray(cli):
    """``python -X importtime -m ... --help`` lists every module imported: none of the heavy ones (< 1 s start)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", cli, "--help"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert run.returncode == 0 and run.stdout.startswith("usage:"), run.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "transformers", "ray", "deepspeed"}
