"""Patient-level train/validation split.

Frames of one patient are near-duplicates, so a random frame split leaks. The group (patient) of a record is
parsed from its image file name with a regular expression; the default fits
``An_Cong_Xue(0000932433)_1-3_1_051C3E6A_frame_000011.jpg`` (name, then the patient id in parentheses).
The group is the regex's named group ``id`` when it has one, otherwise its captured groups joined by ``|``,
otherwise the whole match. Names that do not match become their own group (one per file name), with a warning.
A run (cine sequence, :mod:`sa2va_ray.data.runs`) is never cut: groups that share a run are joined, so the frames
of a run whose names lack a patient id (or parse to several ids with a custom regex) stay in one split.
Groups are shuffled with the seed and added to validation until it holds about ``val_fraction`` of the records.

Command line::

    python -m sa2va_ray.data.split --annotations FILE --out DIR [--val-fraction F] [--seed N] [--group-regex R] \
        [--run-regex R] [--config FILE] [--strict] [-q]

writes ``DIR/train.json`` and ``DIR/val.json`` (records copied unchanged, original order) and prints the counts.
Defaults are the config's ``data.*`` keys (from ``--config FILE``, else the schema's).
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sa2va_ray.cli import CliParser, module_main, module_parser, parse_module_args
from sa2va_ray.config import DataSection
from sa2va_ray.data.annotations import AnnotationFileError, load_annotation_list
from sa2va_ray.data.patients import DEFAULT_GROUP_REGEX, compile_group_regex, parse_group
from sa2va_ray.data.runs import compile_run_regex, parse_run

logger = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = DataSection.val_fraction
"""The config's default ``data.val_fraction`` (stated there), under the name older code imports."""


@dataclass
class SplitResult:
    """Outcome of :func:`split_records`: records (unchanged, original order) and groups per split."""

    train: list[Any] = field(default_factory=list)
    val: list[Any] = field(default_factory=list)
    train_groups: set[str] = field(default_factory=set)
    val_groups: set[str] = field(default_factory=set)
    unmatched: list[str] = field(default_factory=list)


def split_records(
    records: list[Any],
    val_fraction: float,
    seed: int,
    regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX,
    run_regex: str | re.Pattern[str] | None = None,
) -> SplitResult:
    """Splits raw records by patient so that no group is in both splits, nor any run; deterministic for a seed.

    Args:
        records: Raw annotation records (any JSON values; those without an image name are their own group).
        val_fraction: Target fraction of records in validation, in ``[0, 1)``.
        seed: Shuffling seed.
        regex: Group pattern (see :func:`group_id`).
        run_regex: Run pattern of :mod:`sa2va_ray.data.runs` (None: its default); groups sharing a run are joined.

    Returns:
        The split; at least one group goes to validation when ``val_fraction > 0`` and there are two groups.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    pattern = compile_group_regex(regex)
    members: dict[str, list[int]] = defaultdict(list)
    unmatched: list[str] = []
    for i, rec in enumerate(records):
        image = rec.get("image") if isinstance(rec, dict) else None
        if not isinstance(image, str):
            gid = f"record:{i}"
            unmatched.append(f"record {i} (no image name)")
        else:
            g = parse_group(image, pattern)
            if g is None:
                gid = f"file:{image}"
                if len(members[gid]) == 0:
                    unmatched.append(image)
            else:
                gid = f"group:{g}"
        members[gid].append(i)
    members, joined = _join_groups_of_runs(records, members, run_regex)
    if unmatched:
        logger.warning(
            "%d file name(s) do not match the group regex %r and are their own group, e.g. %s",
            len(unmatched),
            pattern.pattern,
            ", ".join(unmatched[:3]),
        )
    order = sorted(members)
    random.Random(seed).shuffle(order)
    target = val_fraction * len(records)
    val_groups: list[str] = []
    count = 0
    for gid in order:
        size = len(members[gid])
        if abs(count + size - target) < abs(count - target):
            val_groups.append(gid)
            count += size
    if val_fraction > 0 and not val_groups and len(order) >= 2:
        val_groups.append(min(order, key=lambda g: len(members[g])))
    if len(val_groups) == len(order) and order:
        val_groups.pop()  # keep training non-empty
    if val_fraction > 0 and not val_groups:
        logger.warning("only %d group(s): the validation split is empty", len(order))
    val_set = set(val_groups)
    val_idx = sorted(i for g in val_set for i in members[g])
    val_lookup = set(val_idx)

    def strip(gids: set[str]) -> set[str]:
        return {g.split(":", 1)[1] for gid in gids for g in joined.get(gid, [gid])}

    return SplitResult(
        train=[r for i, r in enumerate(records) if i not in val_lookup],
        val=[records[i] for i in val_idx],
        train_groups=strip({g for g in members if g not in val_set}),
        val_groups=strip(val_set),
        unmatched=unmatched,
    )


def _join_groups_of_runs(
    records: list[Any], members: dict[str, list[int]], run_regex: str | re.Pattern[str] | None
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Joins the groups that share a run (union-find); the joined group takes the smallest group key.

    Returns:
        ``(members, joined)``: records per group after joining, and the original groups of each joined one.
        Without runs across groups, ``members`` is returned unchanged (the split is the same as by patient alone).
    """

    pattern = compile_run_regex(run_regex)
    gid_of = {i: gid for gid, idx in members.items() for i in idx}
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    first_of_run: dict[str, str] = {}
    for i, rec in enumerate(records):
        image = rec.get("image") if isinstance(rec, dict) else None
        parsed = parse_run(image, pattern) if isinstance(image, str) else None
        if parsed is None:
            continue
        a, b = find(first_of_run.setdefault(parsed[0], gid_of[i])), find(gid_of[i])
        if a != b:
            parent[max(a, b)] = min(a, b)
    if not parent:
        return members, {}
    out: dict[str, list[int]] = defaultdict(list)
    joined: dict[str, list[str]] = defaultdict(list)
    for gid, idx in members.items():
        out[find(gid)].extend(idx)
        joined[find(gid)].append(gid)
    joined = {g: parts for g, parts in joined.items() if len(parts) > 1}
    logger.warning("frames of one run fall into several groups of the group regex; groups sharing a run are kept "
                   "together (%d joined group(s), e.g. of %s)", len(joined),
                   ", ".join(g.split(":", 1)[1] for g in sorted(next(iter(joined.values())))[:3]))
    return {g: sorted(idx) for g, idx in out.items()}, joined


def build_parser() -> CliParser:
    """The CLI's parser: its flags are ``data.*`` keys, their defaults the config's."""
    ap = module_parser("python -m sa2va_ray.data.split", __doc__.split("\n")[0], config="optional",
                       strict="exit 1 when a file name does not match the group regex", strict_key="data.strict")
    ap.add_config_argument("--annotations", key="data.annotations", help="annotations.json to split")
    ap.add_argument("--out", required=True, help="output directory for train.json and val.json")
    ap.add_config_argument("--val-fraction", key="data.val_fraction", type=float,
                           help="fraction of records in validation")
    ap.add_config_argument("--seed", key="data.split_seed", type=int, help="seed of the split")
    ap.add_config_argument("--group-regex", key="data.group_regex",
                           help=f"regex with a named group 'id' (empty: {DEFAULT_GROUP_REGEX})")
    ap.add_config_argument("--run-regex", key="data.run_regex", help="regex with named groups 'run' and 'frame' "
                           "(runs are never cut; empty: the run is the name before '_frame_')")
    return ap


@module_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    ap = build_parser()
    args, _ = parse_module_args(ap, argv)
    if not args.annotations:
        ap.error("give --annotations FILE (or data.annotations in --config)")
    try:
        records = load_annotation_list(args.annotations)
        regex = re.compile(args.group_regex or DEFAULT_GROUP_REGEX)
        result = split_records(records, args.val_fraction, args.seed, regex, args.run_regex or None)
    except (AnnotationFileError, ValueError, re.error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train", result.train), ("val", result.val)):
        with (out / f"{name}.json").open("w", encoding="utf-8") as f:
            json.dump(recs, f, ensure_ascii=False)
    print(f"split of {args.annotations}: val fraction {args.val_fraction}, seed {args.seed}")
    print(f"{'split':<6} {'records':>8} {'patients':>9}")
    print(f"{'train':<6} {len(result.train):>8} {len(result.train_groups):>9}")
    print(f"{'val':<6} {len(result.val):>8} {len(result.val_groups):>9}")
    if result.unmatched:
        print(f"{len(result.unmatched)} file name(s) did not match the group regex (each is its own group)")
    print(f"written {out / 'train.json'} and {out / 'val.json'}")
    if args.strict and result.unmatched:
        print(f"strict: {len(result.unmatched)} file name(s) without a patient id, e.g. {result.unmatched[0]}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
