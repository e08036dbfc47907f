"""Patients in file names: the group a record belongs to when splitting, pseudonymising and reporting.

``Name(0000932433)_1-3_1_051C3E6A_frame_000011.jpg`` belongs to patient ``0000932433``; frames of one patient are
near-duplicates, so every split, every report and the pseudonymiser group by this one rule.
"""

from __future__ import annotations

import re

DEFAULT_GROUP_REGEX = r"(?P<name>[^/\\()]*?)\s*\((?P<id>\d+)\)"
"""Patient name (without path separators or parentheses) followed by the patient id in parentheses."""


def compile_group_regex(regex: str | re.Pattern[str]) -> re.Pattern[str]:
    """The patient regex, compiled."""
    return regex if isinstance(regex, re.Pattern) else re.compile(regex)


def group_of_match(m: re.Match[str]) -> str:
    """Returns the group id of a regex match: named group ``id``, else the captured groups, else the match."""
    if "id" in m.re.groupindex and m.group("id") is not None:
        return m.group("id")
    groups = [g for g in m.groups() if g is not None]
    return "|".join(groups) if groups else m.group(0)


def parse_group(file_name: str, regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX) -> str | None:
    """Returns the patient/group id parsed from a file name, or None when the name does not match."""
    m = compile_group_regex(regex).search(file_name)
    return group_of_match(m) if m else None


def group_id(file_name: str, regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX) -> str:
    """Returns the split group of a file name: the parsed patient id, or the file name itself when unmatched.

    Args:
        file_name: Image file name, e.g. ``Name(0000932433)_1-3_1_051C3E6A_frame_000011.jpg``.
        regex: Pattern with a named group ``id`` (or other capture groups); searched, not anchored.

    Returns:
        ``"0000932433"`` for the example above; ``file_name`` when it does not match.
    """
    g = parse_group(file_name, regex)
    return file_name if g is None else g
