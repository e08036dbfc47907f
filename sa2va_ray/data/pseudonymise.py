"""Pseudonymisation of patient identifiers in file names, messages and tables.

A patient's name and id (the span matched by the group regex of :mod:`sa2va_ray.data.split`) are replaced by
``patient-<hash>``, where the hash is an HMAC-SHA256 of the patient id under a secret salt: stable for the same
salt (frames of one patient keep one pseudonym, tables can be joined), not reversible without the salt.
File names that do not match the regex are replaced as a whole (``file-<hash>.<ext>``) since the identifier
cannot be located. Keep the salt secret: patient ids are short enough to brute-force when it is known.

The salt is never part of a config (so never in ``config.yaml``, checkpoints, ``train_config.yaml`` or
``tune/best.yaml``): :func:`load_salt` reads it from the file ``data.salt_file`` names or from ``$SA2VA_SALT``, on the
driver only. Workers get a table of pseudonyms for the names they may mention (:func:`hide_names`), never the salt.
:func:`install_log_pseudonymiser` passes every log record of a process through the same replacement.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from sa2va_ray.data.patients import DEFAULT_GROUP_REGEX, group_of_match

HASH_LENGTH = 12
SALT_ENV = "SA2VA_SALT"
PUBLIC_SALTS = frozenset({"sa2va-ray"})  # the default of earlier versions: published, so no secret
MIN_SALT_CHARS = 16
SALT_HINT = "e.g. python -c 'import secrets; print(secrets.token_hex(16))' > salt.txt"


def load_salt(salt_file: str = "", environ: Mapping[str, str] | None = None) -> str:
    """The secret salt: the first line of ``salt_file`` when given, else ``$SA2VA_SALT``.

    Raises:
        ConfigError: one line when neither gives a salt, the file cannot be read, or the salt is public or short.
    """
    from sa2va_ray.config import ConfigError

    env = os.environ if environ is None else environ
    if salt_file:
        try:
            salt, where = (Path(salt_file).read_text().splitlines() or [""])[0].strip(), f"data.salt_file={salt_file}"
        except OSError as e:
            raise ConfigError(f"data.salt_file={salt_file}: cannot read the salt ({e.strerror or e})") from None
    else:
        salt, where = env.get(SALT_ENV, "").strip(), f"${SALT_ENV}"
        if not salt:
            raise ConfigError(f"data.pseudonymise=true needs a secret salt: set {SALT_ENV} or data.salt_file=FILE "
                              f"({SALT_HINT})")
    if salt in PUBLIC_SALTS:
        raise ConfigError(f"{where}: {salt!r} is the public default salt, which hides nothing; use a secret one "
                          f"({SALT_HINT})")
    if len(salt) < MIN_SALT_CHARS:
        raise ConfigError(f"{where}: the salt has {len(salt)} characters; use at least {MIN_SALT_CHARS} ({SALT_HINT})")
    return salt


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
        regex: Group pattern (see :func:`sa2va_ray.data.patients.group_id`).

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


def image_names(annotations: str | Path) -> list[str]:
    """The ``image`` names of an annotations file, valid records or not ([] when it cannot be read: validation says
    why), so that messages about bad records can be pseudonymised too."""
    try:
        records = json.loads(Path(annotations).read_text())
    except (OSError, ValueError):
        return []
    records = records if isinstance(records, list) else []
    return [r["image"] for r in records if isinstance(r, dict) and isinstance(r.get("image"), str) and r["image"]]


def hide_names(message: str, aliases: Mapping[str, str]) -> str:
    """Replace each known raw name in ``message`` by its pseudonym (longest first); no salt needed."""
    for name in sorted((n for n in aliases if n in message), key=len, reverse=True):
        message = message.replace(name, aliases[name])
    return message


def hide_exception(error: BaseException, aliases: Mapping[str, str]) -> BaseException:
    """``error`` itself when its traceback quotes no known raw name, else a ``RuntimeError`` carrying the traceback
    with pseudonyms (raise it ``from None``: the original, which Ray would print and pickle, is dropped)."""
    text = "".join(traceback.format_exception(error)).rstrip("\n")
    hidden = hide_names(text, aliases)
    return error if hidden == text else RuntimeError(f"{type(error).__name__} (names pseudonymised):\n{hidden}")


class Pseudonymiser:
    """Pseudonyms of file names and free text under one salt, with a table of the raw names a run knows of.

    Args:
        salt: the secret salt (:func:`load_salt`).
        regex: group pattern locating patient names/ids.
        names: raw file names that messages may quote (their pseudonyms form :attr:`aliases`).
    """

    def __init__(self, salt: str, regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX, names: Iterable[str] = ()):
        self._salt, self._pattern = salt, _pattern(regex)
        self.aliases = {n: pseudonymise_name(n, salt, self._pattern) for n in set(names)}

    def name(self, file_name: str) -> str:
        """The pseudonym of a file name."""
        return self.aliases.get(file_name) or pseudonymise_name(file_name, self._salt, self._pattern)

    def patient(self, patient_id: str) -> str:
        """The pseudonym of a patient id (as the ``patient`` column of a table holds it)."""
        return f"patient-{hash_identifier(patient_id, self._salt)}"

    def text(self, message: str) -> str:
        """A message with every known name and every patient name/id the regex finds replaced."""
        return pseudonymise_text(hide_names(message, self.aliases), self._salt, self._pattern)


_hide: Callable[[str], str] | None = None
_base_factory: Callable[..., logging.LogRecord] | None = None


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    hide = _hide
    if hide is not None:
        record.msg, record.args = hide(record.getMessage()), None
        if record.exc_info:  # a traceback may quote a file name too
            record.exc_text = hide("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    return record


def install_log_pseudonymiser(hide: Callable[[str], str] | None) -> None:
    """From now on every log record of this process (any logger, any handler) passes through ``hide``; ``None``
    switches it off. Prints and Ray's own output are not log records: code that prints names hides them itself."""
    global _hide, _base_factory
    if _base_factory is None:
        _base_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_record_factory)
    _hide = hide
