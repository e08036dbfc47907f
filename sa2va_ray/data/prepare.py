"""What every job does before work starts: make the synthetic set if asked, validate, split by patient."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sa2va_ray.config import Config
from sa2va_ray.data.annotations import AnnotationFileError, Sample
from sa2va_ray.data.patients import DEFAULT_GROUP_REGEX
from sa2va_ray.data.pseudonymise import Pseudonymiser, image_names, install_log_pseudonymiser, load_salt
from sa2va_ray.data.split import split_records
from sa2va_ray.data.text_rules import text_rules_for_config
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
    aliases: dict[str, str] = field(default_factory=dict)  # raw image name -> pseudonym (data.pseudonymise only)

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


def validation_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :func:`~sa2va_ray.data.validate.load_valid_samples` for a job: every job validates
    with the same rules, so training and evaluation agree on the valid records (and hence on the split)."""
    return {"text_rules": text_rules_for_config(cfg), "allow_symlinks_outside": cfg.data.allow_symlinks_outside,
            "run_regex": cfg.data.run_regex or None}


def prepare_splits(cfg: Config) -> Splits:
    """Validated train/val samples: ``data.val_annotations`` when given, else a patient-level split.

    The split files go to ``output_dir/split/{train,val}.json``. Records are validated with the job's model rules
    (:func:`validation_kwargs`).

    Raises:
        AnnotationFileError: The annotations file is unusable or no record is valid (one line: file and fix).
        DataValidationError: In strict mode, when any record has a problem.
    """
    ensure_data(cfg)
    d = cfg.data
    regex = d.group_regex or DEFAULT_GROUP_REGEX
    pz = start_pseudonymising(cfg, regex)
    kw = validation_kwargs(cfg)
    if d.val_annotations:
        train, rep_t = load_valid_samples(d.annotations, d.images_dir, strict=d.strict, **kw)
        val, rep_v = load_valid_samples(d.val_annotations, d.images_dir, strict=d.strict, **kw)
        splits = Splits(train, val, d.images_dir, {"train": rep_t, "val": rep_v})
    else:
        samples, rep = load_valid_samples(d.annotations, d.images_dir, strict=d.strict, **kw)
        result = split_records([s.record for s in samples], d.val_fraction, d.split_seed, regex, d.run_regex or None)
        val_ids = {id(r) for r in result.val}
        train = [s for s in samples if id(s.record) not in val_ids]
        val = [s for s in samples if id(s.record) in val_ids]
        out = Path(cfg.output_dir) / "split"
        out.mkdir(parents=True, exist_ok=True)
        for name, records in (("train", result.train), ("val", result.val)):
            if pz is not None:  # a run's split files hold pseudonyms; the split CLI keeps records unchanged
                records = [{**r, "image": pz.name(r["image"])} if isinstance(r.get("image"), str) else r
                           for r in records]
            (out / f"{name}.json").write_text(json.dumps(records))
        splits = Splits(train, val, d.images_dir, {"all": rep})
    from sa2va_ray.data.patients import group_id

    splits.train_patients = len({group_id(s.image, regex) for s in splits.train})
    splits.val_patients = len({group_id(s.image, regex) for s in splits.val})
    if pz is not None:  # the workers' table for their own messages (they never get the salt)
        splits.aliases = {s.image: pz.name(s.image) for s in (*splits.train, *splits.val)}
    return splits


def require_training_splits(cfg: Config, splits: Splits, need_val: bool = False) -> None:
    """One-line errors (``AnnotationFileError``) for splits training cannot start from: no valid training record,
    or, for a sweep, no validation record. Jobs call it before Ray starts."""
    if not splits.train:
        raise AnnotationFileError(f"no valid training records in {cfg.data.annotations}: see the validation report "
                                  "above; fix the records or point data.annotations at another file")
    if need_val and not splits.val:
        raise AnnotationFileError(f"no validation records for {cfg.data.annotations} (a sweep's metric is measured "
                                  "on them): set data.val_annotations or data.val_fraction > 0")


def start_pseudonymising(cfg: Config, regex: str, names: list[str] | None = None) -> Pseudonymiser | None:
    """With ``data.pseudonymise``: the run's :class:`Pseudonymiser` (salt from ``data.salt_file`` or ``$SA2VA_SALT``,
    every image name of the annotation files known, or ``names`` when given: an unlabeled folder's files), also
    applied to every log record of this process from now on.

    Raises:
        ConfigError: no usable salt (one line).
    """
    d = cfg.data
    if not d.pseudonymise:
        install_log_pseudonymiser(None)
        return None
    if names is None:
        names = [n for f in (d.annotations, d.val_annotations) if f for n in image_names(f)]
    pz = Pseudonymiser(load_salt(d.salt_file), regex, names)
    install_log_pseudonymiser(pz.text)
    return pz
