"""What every job does before work starts: make the synthetic set if asked, validate, split by patient."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sa2va_ray.config import Config
from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.split import DEFAULT_GROUP_REGEX, split_records
from sa2va_ray.data.validate import ValidationReport, load_valid_samples

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Validated samples of both splits and the reports that produced them."""

    train: list[Sample]
    val: list[Sample]
    images_dir: str
    reports: dict[str, ValidationReport] = field(default_factory=dict)
    train_patients: int = 0
    val_patients: int = 0

    def summary(self) -> str:
        """One readable line per split."""
        lines = []
        for name, samples, patients in (("train", self.train, self.train_patients),
                                        ("val", self.val, self.val_patients)):
            rep = self.reports.get(name) or self.reports.get("all")
            lines.append(f"{name}: {len(samples)} records, {sum(len(s.texts) for s in samples)} samples, "
                         f"{patients} patients")
            if rep is not None and name in self.reports:
                lines[-1] += f" ({rep.invalid} of {rep.records} records excluded)"
        return "\n".join(lines)


def ensure_data(cfg: Config) -> None:
    """Make the synthetic set when ``data.synthetic.enabled`` and the annotations do not exist yet."""
    syn = cfg.data.synthetic
    ann = Path(cfg.data.annotations) if cfg.data.annotations else Path(syn.out) / "annotations.json"
    if syn.enabled and not ann.exists():
        from sa2va_ray.data.synthetic import generate_synthetic_set

        log.info("making the synthetic angiography set in %s (%d patients x %d frames, %d px)",
                 syn.out, syn.patients, syn.frames, syn.size)
        generate_synthetic_set(syn.out, patients=syn.patients, frames=syn.frames, size=syn.size, seed=syn.seed)
    if not cfg.data.annotations:
        cfg.data.annotations = str(ann)
    if not cfg.data.images_dir:
        cfg.data.images_dir = str(ann.parent / "images")


def prepare_splits(cfg: Config) -> Splits:
    """Validated train/val samples: ``data.val_annotations`` when given, else a patient-level split.

    The split files go to ``output_dir/split/{train,val}.json``. Raises ``DataValidationError`` in strict mode.
    """
    ensure_data(cfg)
    d = cfg.data
    regex = d.group_regex or DEFAULT_GROUP_REGEX
    if d.val_annotations:
        train, rep_t = load_valid_samples(d.annotations, d.images_dir, strict=d.strict)
        val, rep_v = load_valid_samples(d.val_annotations, d.images_dir, strict=d.strict)
        splits = Splits(train, val, d.images_dir, {"train": rep_t, "val": rep_v})
    else:
        samples, rep = load_valid_samples(d.annotations, d.images_dir, strict=d.strict)
        result = split_records([s.record for s in samples], d.val_fraction, d.split_seed, regex)
        val_ids = {id(r) for r in result.val}
        train = [s for s in samples if id(s.record) not in val_ids]
        val = [s for s in samples if id(s.record) in val_ids]
        out = Path(cfg.output_dir) / "split"
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").write_text(json.dumps(result.train))
        (out / "val.json").write_text(json.dumps(result.val))
        splits = Splits(train, val, d.images_dir, {"all": rep})
    from sa2va_ray.data.split import group_id

    splits.train_patients = len({group_id(s.image, regex) for s in splits.train})
    splits.val_patients = len({group_id(s.image, regex) for s in splits.val})
    return splits
