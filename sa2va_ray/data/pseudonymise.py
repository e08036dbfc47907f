"""Pseudonymisation of patient identifiers in file names, messages and tables.

A patient's name and id (the span matched by the group regex of :mod:`sa2va_ray.data.split`) are replaced by
``patient-<hash>``, where the hash is an HMAC-SHA256 of the patient id under a secret salt: stable for the same
salt (frames of one patient keep one pseudonym, tables can be joined), not reversible without the salt.
File names that do not match the regex are replaced as a whole (``file-<hash>.<ext>``) since the identifier
cannot be located. Keep the salt secret: patient ids are short enough to brute-force when it is known.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import PurePosixPath
from typing import Any

from sa2va_ray.data.split import DEFAULT_GROUP_REGEX, group_of_match

HASH_LENGTH = 12


def hash_identifier(value: str, salt: str, length: int = HASH_LENGTH) -> str:
    """Returns the first ``length`` hex digits of HMAC-SHA256(salt, value).

    Raises:
        ValueError: If the salt is empty (an unsalted hash of an id is trivially reversible).
    """
    if not salt:
        raise ValueError("pseudonymisation needs a non-empty secret salt")
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()[:length]


def _pattern(regex: str | re.Pattern[str]) -> re.Pattern[str]:
    return regex if isinstance(regex, re.Pattern) else re.compile(regex)


def pseudonymise_text(text: str, salt: str, regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX) -> str:
    """Replaces every patient name/id match in an arbitrary string (path, log line, message) by its pseudonym.

    Args:
        text: Any string.
        salt: Secret salt.
        regex: Group pattern (named group ``id`` recommended).

    Returns:
        The string with each match replaced by ``patient-<hash of the id>``.
    """
    return _pattern(regex).sub(lambda m: f"patient-{hash_identifier(group_of_match(m), salt)}", text)


def pseudonymise_name(file_name: str, salt: str, regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX) -> str:
    """Replaces the patient name and id in a file name by a salted hash.

    ``An_Cong_Xue(0000932433)_1-3_1_051C3E6A_frame_000011.jpg`` becomes
    ``patient-<hash>_1-3_1_051C3E6A_frame_000011.jpg``; a name that does not match becomes ``file-<hash>.jpg``
    (directories kept).

    Args:
        file_name: Image file name or relative path.
        salt: Secret salt (same salt, same pseudonym).
        regex: Group pattern (see :func:`sa2va_ray.data.split.group_id`).

    Returns:
        The pseudonymised name.
    """
    pattern = _pattern(regex)
    if pattern.search(file_name):
        return pseudonymise_text(file_name, salt, pattern)
    path = PurePosixPath(file_name)
    alias = f"file-{hash_identifier(path.stem, salt)}{path.suffix}"
    return alias if str(path.parent) == "." else str(path.parent / alias)


def pseudonymise_column(df: Any, column: str, salt: str, regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX) -> Any:
    """Returns a copy of a pandas DataFrame whose ``column`` of file names is pseudonymised.

    Args:
        df: A pandas DataFrame.
        column: Name of a column holding file names (non-strings are left unchanged).
        salt: Secret salt.
        regex: Group pattern.
    """
    out = df.copy()
    out[column] = out[column].map(lambda v: pseudonymise_name(v, salt, regex) if isinstance(v, str) else v)
    return out
