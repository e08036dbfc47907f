"""What an evaluation covers, prepared in one pass: valid samples, error rows for invalid records, patients.

Which records: ``data.val_annotations`` when set, else the validation split of ``data.annotations`` (patient-level,
:func:`sa2va_ray.data.prepare.prepare_splits`). Records that fail validation get ``status=error`` rows
(:func:`~sa2va_ray.evaluate.table.validation_error_rows`); with a patient split, an invalid record belongs to the split
of its patient, and one whose patient has no valid record at all is evaluated (reported) rather than dropped.
The run's pseudonymiser (``data.pseudonymise``) and each image's patient id travel with the inputs, so the table, the
overlays and the log quote names through one place.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sa2va_ray.config import Config, config_from_dict, config_to_dict
from sa2va_ray.data.annotations import AnnotationFileError, Sample, load_annotation_list
from sa2va_ray.data.patients import DEFAULT_GROUP_REGEX, group_id
from sa2va_ray.data.pseudonymise import Pseudonymiser
from sa2va_ray.evaluate.table import validation_error_rows

log = logging.getLogger(__name__)


@dataclass
class EvalInputs:
    """What one evaluation covers: valid samples to predict and rows for the records that failed validation."""

    samples: list[Sample]
    failed_rows: list[dict[str, Any]]
    images_dir: str
    annotations: str
    n_records: int
    group_regex: str = DEFAULT_GROUP_REGEX
    pseudonymiser: Pseudonymiser | None = None
    """With ``data.pseudonymise``: the run's one pseudonymiser (table, overlays and messages all go through it)."""
    patients: dict[str, str] = field(default_factory=dict)
    """Raw image name -> patient id, computed once for every image the evaluation names."""

    def patient_of(self, image: str) -> str:
        """The patient id of a raw image name (the split's rule)."""
        if image not in self.patients:
            self.patients[image] = group_id(image, self.group_regex)
        return self.patients[image]

    def display_name(self, image: str) -> str:
        """The name outputs show: the pseudonym with ``data.pseudonymise``, else the raw name."""
        return self.pseudonymiser.name(image) if self.pseudonymiser is not None else image

    def hide(self, message: str) -> str:
        """A message as outputs may quote it (names and patient ids pseudonymised when asked)."""
        return self.pseudonymiser.text(message) if self.pseudonymiser is not None else message


def collect_eval_inputs(cfg: Config) -> EvalInputs:
    """Validate the evaluation records (never strict here: failures become rows, strictness is applied at the end)."""
    from sa2va_ray.data.prepare import ensure_data, start_pseudonymising

    c = config_from_dict(config_to_dict(cfg))
    c.data.strict = False
    ensure_data(c)
    regex = c.data.group_regex or DEFAULT_GROUP_REGEX
    pz = start_pseudonymising(c, regex)  # this process's log records quote pseudonyms only (with data.pseudonymise)
    with _quiet_validation(c.data.pseudonymise):
        inputs = _collect(c, regex)
    inputs.pseudonymiser = pz
    return inputs


@contextlib.contextmanager
def _quiet_validation(quiet: bool):
    """Silence the validator's console warning (it quotes raw file names) while pseudonymising; rows carry it."""
    logger = logging.getLogger("sa2va_ray.data.validate")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _collect(c: Config, regex: str) -> EvalInputs:
    from sa2va_ray.data.prepare import prepare_splits, validation_kwargs
    from sa2va_ray.data.validate import load_valid_samples

    if c.data.val_annotations:
        path = c.data.val_annotations
        raw = load_annotation_list(path)
        samples, report = load_valid_samples(raw, c.data.images_dir, require_valid=False, **validation_kwargs(c))
        wanted = {p.index for p in report.problems}
    else:
        path = c.data.annotations
        splits = prepare_splits(c)
        report = splits.reports["all"]
        raw = load_annotation_list(path) if report.problems else []  # read again only to give failed records rows
        samples = splits.val
        patients = {s.image: group_id(s.image, regex) for s in (*splits.train, *splits.val)}
        train_patients = {patients[s.image] for s in splits.train}

        def patient(i: int) -> str:
            rec = raw[i]
            image = rec.get("image") if isinstance(rec, dict) else None
            if not (isinstance(image, str) and image):
                return f"<record {i}>"
            return patients.setdefault(image, group_id(image, regex))

        wanted = {p.index for p in report.problems if patient(p.index) not in train_patients}
        log.info("patient split: %d valid validation records; %d invalid records reported with them",
                 len(samples), len(wanted))
    failed = validation_error_rows(raw, report.problems, wanted)
    n_records = len(samples) + len({r["record_index"] for r in failed})
    if n_records == 0:
        raise AnnotationFileError(f"{path}: no records to evaluate")
    if failed:
        log.warning("%d of %d evaluation records failed validation; they get error rows (see samples.csv)",
                    len({r["record_index"] for r in failed}), n_records)
    inputs = EvalInputs(samples, failed, absolute_path(c.data.images_dir), path, n_records, regex)
    if not c.data.val_annotations:
        inputs.patients.update(patients)
    return inputs


def absolute_path(path: str) -> str:
    """Absolute form of a path that exists here (Ray workers may run in another working directory)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def check_model_path(cfg: Config) -> None:
    """Fail before any work when ``model.path`` is set but is not a model path (the one rule of
    :func:`sa2va_ray.checkpoint.layout.model_path_kind`: a model directory or a training checkpoint)."""
    from sa2va_ray.checkpoint.layout import describe_model_path, model_path_kind

    if cfg.model.path and model_path_kind(cfg.model.path) is None:
        raise FileNotFoundError(describe_model_path(cfg.model.path, "model.path"))
