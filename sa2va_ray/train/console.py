"""One readable console for a run: rank 0's progress, our warnings, Ray's start-up lines once.

Without this, every worker repeats the same third-party lines (DeepSpeed's accelerator guess, its scheduler's
start-up warning, torch's deprecation of a collective DeepSpeed still calls, Ray Train's INFO lines per report) and
Ray deduplicates only some of them. Each filter below is cut at its source and names why it is safe to drop: the
line is known, says nothing about this run, and the condition behind it is not ours to fix.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator

KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
     "DeepSpeed's ZeRO gathers call it on every step (their code, not ours); torch still supports it"),
    (DeprecationWarning, r"`ExecutionOptions\.exclude_resources` is deprecated",
     "Ray Train's own DatasetManager sets it (Ray 2.60); our code never does"),
)
"""(category, message regex, why) of third-party warnings a run cannot act on."""

KNOWN_LOG_LINES = ("Attempting to get learning rate from scheduler before it has started",)
"""DeepSpeed log messages dropped: its WarmupCosineLR logs this from its own constructor, on every rank."""

KNOWN_PRINTS = re.compile(r"DeepSpeed [\w.]+ built successfully$")
"""DeepSpeed prints (not logs) this when it builds its CPU shared-memory collective op, once per rank."""

RAY_TRAIN_CONSOLE_LEVEL = "WARNING"
"""Ray Train's console level on the controller and the workers: its per-report and worker-group INFO lines repeat
per rank; ours say the same once (``[train] step ...``)."""


class _DropKnownLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(KNOWN_LOG_LINES) or KNOWN_PRINTS.match(message))


def quiet_known_warnings() -> None:
    """Ignore :data:`KNOWN_WARNINGS` and :data:`KNOWN_LOG_LINES` in this process (idempotent)."""
    for category, message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # DeepSpeed's own logger, and the root logger: on a Ray Train worker `print` is patched into root-logger records.
    for logger in (logging.getLogger("DeepSpeed"), logging.getLogger()):
        if not any(isinstance(f, _DropKnownLines) for f in logger.filters):
            logger.addFilter(_DropKnownLines())


def select_deepspeed_accelerator(use_gpu: bool) -> None:
    """Name DeepSpeed's accelerator on a CPU run instead of letting it guess (and warn "Setting accelerator to CPU"
    in every process). Call before the first ``import deepspeed``; a GPU run keeps DeepSpeed's own detection."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def ray_worker_pythonwarnings() -> str:
    """``PYTHONWARNINGS`` for the processes of a local Ray this driver starts: the known warnings that Ray's own
    actors raise (we cannot filter inside them otherwise). The user's own entries are kept; ours match only those
    exact messages."""
    ours = [f"ignore:{msg.replace(chr(92), '')}:{cat.__name__}" for cat, msg, _ in KNOWN_WARNINGS
            if cat is DeprecationWarning]
    current = [e for e in os.environ.get("PYTHONWARNINGS", "").split(",") if e]
    return ",".join(current + [e for e in ours if e not in current])


@contextlib.contextmanager
def known_prints_dropped() -> Iterator[None]:
    """Capture stdout of a third-party call and print it back without the lines of :data:`KNOWN_PRINTS`."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        kept = [line for line in buffer.getvalue().splitlines() if not KNOWN_PRINTS.match(line)]
        if kept:
            print("\n".join(kept), flush=True)


def quiet_ray_train_reports() -> None:
    """Ray Train's "Reporting training result ..." INFO line, once per rank and report, off the console.

    Ray 2.60 names that logger by its file path, so ``LoggingConfig(log_level=...)`` (which filters ``ray.train.*``)
    misses it; our ``[train] step`` lines already say what was reported.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
