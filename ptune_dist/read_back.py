"""Values read back from files ptune wrote (job records, study.json, state.json, attempts.json, ensemble
records): checked with their type and domain at the point they are read, as typed input is.

A file ptune wrote can still be edited, truncated or replaced by hand, so what comes back is input.
`read_record(path, what, remedy)` is the file's JSON object, or one PtuneError naming the file.
`value(record, key, check, path, remedy)` is one field, checked by a `check`: a function that returns the
value (possibly normalised) or raises ValueError saying what it should be. The checks below cover what
ptune writes; `list_of(check)` and `one_of(...)` build the rest. An error names the file, the key, what was
there and what was expected, and the remedy (what command writes the file again, or what to delete).

    rec = read_record(path, "a job record", "submit the run again")
    ids = value(rec, "job_ids", list_of(job_id), path, "submit the run again")
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ptune_dist.errors import PtuneError

MISSING = object()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,@-]*")  # used with fullmatch: `$` would let a final newline in
_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")


def read_record(path, what: str, remedy: str, missing_ok: bool = False) -> dict | None:
    """The JSON object in `path`; None when it is absent and `missing_ok`; else a PtuneError naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise PtuneError(f"{path}: missing; it should hold {what}; {remedy}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not JSON"
        raise PtuneError(f"{path}: not {what} ({reason}: damaged or edited); {remedy}") from None
    if not isinstance(record, dict):
        raise PtuneError(f"{path}: not {what} (a JSON {type(record).__name__}, not an object); {remedy}")
    return record


def value(record: dict, key: str, check, path, remedy: str, default=MISSING):
    """`record[key]` passed through `check`; `default` when the key is absent (if one is given)."""
    if key not in record:
        if default is not MISSING:
            return default
        raise PtuneError(f"{path}: {key!r} is missing; {remedy}")
    try:
        return check(record[key])
    except (ValueError, TypeError) as e:
        shown = repr(record[key])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise PtuneError(f"{path}: {key}={shown} is not {e}; {remedy}") from None


def count(v) -> int:
    """A whole number >= 0 (a bool is not one)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError("a whole number >= 0")
    return v


def text(v) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("a non-empty string")
    return v


def name(v) -> str:
    """A plain folder name: no separator, not '.' or '..', nothing that starts an option."""
    if not isinstance(v, str) or not _NAME.fullmatch(v) or len(v) > 200:
        raise ValueError("a plain folder name (letters, digits and ._=+,@- ; no '/' or '..')")
    return v


def job_id(v) -> str:
    """A Slurm job id as ptune records it: digits, or digits_digits for an array task (a string)."""
    if not isinstance(v, str) or not _JOB_ID.fullmatch(v):
        raise ValueError("a Slurm job id (a string of digits, or digits_digits for an array task)")
    return v


def list_of(check):
    def checked(v) -> list:
        if not isinstance(v, list):
            raise ValueError(f"a list ({type(v).__name__} found)")
        return [check(item) for item in v]

    return checked


def one_of(*choices):
    def checked(v):
        if isinstance(v, bool) or v not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return v

    return checked


def number(v) -> float:
    """A finite number (a bool is not one)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError("a finite number")
    return v


def mapping(v) -> dict:
    """A JSON object."""
    if not isinstance(v, dict):
        raise ValueError(f"a JSON object ({type(v).__name__} found)")
    return v
