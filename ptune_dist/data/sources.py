"""Rows from a local file, the hub, or a built-in generator, each row with where it came from (rows.Rows).

JSONL is read here, line by line: blank lines are allowed, every other line must be one JSON object,
and an error names the file and its exact 1-based line. JSON (an array, or JSON lines as `datasets`
reads them), CSV and Parquet are read with `datasets`; a CSV row is named by the line it starts on
(the header is line 1), the others by their 0-based row index. Text files (JSONL, JSON, CSV) must
be UTF-8 (a leading byte-order mark is allowed): other bytes are an error naming the file, the line
and the byte offset.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ptune_dist.errors import DataError

from .rows import Rows

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT = {".json", ".jsonl", ".csv"}


def load_rows(source: str, split: str, key: str, limit: int = 0) -> Rows:
    """The rows of `source` as dicts (the first `limit` when set). `key` names the config entry in
    errors (e.g. tasks.0.train)."""
    name = f"{key}={source!r}"
    if source.startswith("builtin:"):
        from .builtin import generate

        rows = Rows(generate(source[len("builtin:"):], split, key), name)
    elif source.startswith("hub:"):
        rows = Rows(_hub(source[len("hub:"):], split, key), name)
    else:
        rows = _file(Path(source), key, name)
    if not rows:
        raise DataError(f"{name}: the dataset is empty")
    return rows.head(limit) if limit else rows


def decode(data: bytes, what: str) -> str:
    """`data` as UTF-8 text; `what` starts the error ("tasks.0.train: cannot read FILE")."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{what} line {line}: byte 0x{data[e.start]:02x} at byte offset {e.start} (column "
                        f"{column}) is not UTF-8; save the file as UTF-8") from None


def parse_jsonl(text: str, what: str) -> tuple[list[dict], list[int]]:
    """The objects of a JSON-lines text and the 1-based line of each; `what` starts the errors."""
    rows, lines = [], []
    # split on \n only: str.splitlines also splits on characters JSON strings may hold raw (U+2028, \x1c)
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{what} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{what} line {n}: expected a JSON object ({{\"field\": value, ...}}), "
                            f"found {type(row).__name__ if row is not None else 'null'}")
        rows.append(row)
        lines.append(n)
    return rows, lines


def _csv_lines(text: str) -> list[int]:
    """The line each CSV record starts on, header excluded; blank lines hold no record."""
    reader = csv.reader(io.StringIO(text, newline=""))
    starts, end = [], 0
    try:
        for record in reader:
            if record:
                starts.append(end + 1)
            end = reader.line_num
    except csv.Error:  # pandas read it: name rows by index
        return []
    return starts[1:]


def _file(path: Path, key: str, name: str) -> Rows:
    if not path.is_file():
        raise DataError(f"{key}: data file {path} not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{key}: {path} has suffix {path.suffix!r}; expected one of {sorted(FORMATS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{key}={str(path)!r}: the dataset is empty")
    what = f"{key}: cannot read {path}"
    text = decode(path.read_bytes(), what) if path.suffix.lower() in TEXT else None
    if path.suffix.lower() == ".jsonl":
        rows, lines = parse_jsonl(text, what)
        return Rows(rows, name, lines)
    import datasets

    datasets.disable_progress_bars()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parser logs errors we report ourselves
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as e:  # datasets wraps parser errors in several types; name the file either way
        raise DataError(f"{key}: cannot read {path} as {fmt}: {_root_cause(e)}") from None
    finally:
        datasets.logging.set_verbosity(level)
    rows = ds.to_list()
    lines = _csv_lines(text) if fmt == "csv" else None
    # the csv module and pandas may disagree on odd files: then the row index rather than a wrong line
    return Rows(rows, name, lines if lines and len(lines) == len(rows) else None)


def _hub(name: str, split: str, key: str) -> list[dict]:
    import datasets

    repo, _, config = name.partition(":")  # hub:<name>[:<config>], e.g. hub:aps/super_glue:rte
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:
        raise DataError(f"{key}: cannot load hub dataset {name!r} split {split!r}: {_root_cause(e)}") from None
    return ds.to_list()


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {e}"
