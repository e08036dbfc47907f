import csv

from sa2va_ray.train.progress import ProgressLogger


def test_csv_widens_header_and_keeps_rows_on_resume(tmp_path, capsys):
    p = ProgressLogger(tmp_path, max_steps=10, samples_per_step=4)
    p.log(1, {"train/loss": 1.0})
    p.log(2, {"train/loss": 0.5, "val/dice": 0.3})
    p.close()
    out = capsys.readouterr().out
    assert "step 2/10" in out and "val/dice 0.3000" in out and "ETA" in out
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2"] and rows[1]["val/dice"] == "0.3"
    q = ProgressLogger(tmp_path, max_steps=10, samples_per_step=4)  # resumed run from step 3
    q.log(3, {"train/loss": 0.4})
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]


def test_csv_appends_steps_without_new_metrics_and_drops_steps_redone_after_resume(tmp_path):
    p = ProgressLogger(tmp_path, max_steps=10, samples_per_step=4, start_step=0)
    for step in range(1, 6):
        p.log(step, {"train/loss": 1.0 / step, **({"val/dice": 0.5} if step == 3 else {})}, echo=False)
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["val/dice"] for r in rows] == ["", "", "0.5", "", ""]  # later appended lines keep the wide header
    q = ProgressLogger(tmp_path, max_steps=10, samples_per_step=4, start_step=3)  # resumed from step 3
    q.log(4, {"train/loss": 0.2}, echo=False)
    q.log(5, {"train/loss": 0.1}, echo=False)
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"] and rows[-1]["train/loss"] == "0.1"
