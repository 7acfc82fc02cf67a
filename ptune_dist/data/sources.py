"""Rows from a local file, the hub, or a built-in generator, each row with where it came from (rows.Rows).

Local files are parsed here, not by `datasets` (which made up a `text` column for a JSON array of
numbers, shifted CSV columns into an index and turned the CSV cell 007 into 7.0 and "NA" into null):

  - .jsonl: JSON lines. Blank lines are allowed, every other line is one JSON object; a row is named
    by its 1-based line.
  - .json: a JSON array of objects, each row named by its 0-based index and the line it starts on
    ("row 3 (line 9)"); any other text is read as JSON lines. One object over several lines is refused.
  - .csv: the csv module, strict (a quote opened must be closed). The first record is the header, its
    names all different; every later record has as many fields as the header; blank lines hold no
    record; at least one row. A row is named by the line it starts on (the header is line 1; a quoted
    cell may span lines). Cells stay the text written, except: an empty cell is null; a column whose
    every non-empty cell is a plain integer (0, 12, -3; not 007, +1 or 1.0) holds ints, so 0/1 label
    columns are label indices and a number's text is unchanged; a column whose every non-empty cell is
    true or false (any case) holds bools.
  - .parquet: pyarrow; a file that does not begin with Parquet's PAR1 marker is said to be no Parquet
    file, one that does not end with it to be cut short; rows are named by their 0-based index.

In JSON, an object naming one field twice is an error (json keeps the last silently). Text files must
be UTF-8 (a leading byte-order mark is allowed): other bytes are an error naming the file, the line
and the byte offset. A data file must be a regular file: a folder, a device or a pipe is refused (the
training rows are read twice, once to infer the labels). Every error is a DataError naming the file.
`hub:` sources go through `datasets`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ptune_dist.errors import DataError

from .rows import Rows

SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


def load_rows(source: str, split: str, key: str, limit: int = 0) -> Rows:
    """The rows of `source` as dicts (the first `limit` when set). `key` names the config entry in
    errors (e.g. tasks.0.train)."""
    name = f"{key}={source!r}"
    if source.startswith("builtin:"):
        from .builtin import generate

        rows = Rows(generate(source[len("builtin:") :], split, key), name)
    elif source.startswith("hub:"):
        rows = Rows(_hub(source[len("hub:") :], split, key), name)
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
        raise DataError(
            f"{what} line {line}: byte 0x{data[e.start]:02x} at byte offset {e.start} (column "
            f"{column}) is not UTF-8; save the file as UTF-8"
        ) from None


class _Repeated(Exception):
    pass


def _object(pairs: list) -> dict:
    """json's object_pairs_hook: a dict, unless a field is named twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _Repeated(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


NOT_OBJECT = 'expected a JSON object ({"field": value, ...}), found '


def parse_jsonl(text: str, what: str) -> tuple[list[dict], list[int]]:
    """The objects of a JSON-lines text and the 1-based line of each; `what` starts the errors."""
    rows, lines = [], []
    # split on \n only: str.splitlines also splits on characters JSON strings may hold raw (U+2028, \x1c)
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_object)
        except json.JSONDecodeError as e:
            raise DataError(f"{what} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except _Repeated as e:
            raise DataError(f"{what} line {n}: an object names the field {e.args[0]!r} twice") from None
        except RecursionError:
            raise DataError(f"{what} line {n}: not valid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise DataError(f"{what} line {n}: {NOT_OBJECT}{_kind(row)}")
        rows.append(row)
        lines.append(n)
    return rows, lines


def is_json_array(text: str) -> bool:
    return text.startswith("[", _WS.match(text).end())


def parse_json_array(text: str, what: str) -> tuple[list[dict], list[int]]:
    """The objects of a JSON array and the line each starts on; `what` starts the errors."""
    decoder = json.JSONDecoder(object_pairs_hook=_object)
    rows, lines, line, counted = [], [], 1, 0
    i = _WS.match(text, _WS.match(text).end() + 1).end()
    closed = text.startswith("]", i)
    try:
        while not closed:
            line, counted = line + text.count("\n", counted, i), i
            try:
                item, end = decoder.raw_decode(text, i)
            except _Repeated as e:
                raise DataError(
                    f"{what} row {len(rows)} (line {line}): an object names the field {e.args[0]!r} twice"
                ) from None
            except RecursionError:
                raise DataError(f"{what} row {len(rows)} (line {line}): not valid JSON (nested too deeply)") from None
            if not isinstance(item, dict):
                raise DataError(f"{what} row {len(rows)} (line {line}): {NOT_OBJECT}{_kind(item)}")
            rows.append(item)
            lines.append(line)
            i = _WS.match(text, end).end()
            closed = text.startswith("]", i)
            if not closed and not text.startswith(",", i):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
            if not closed:
                i = _WS.match(text, i + 1).end()
        end = _WS.match(text, i + 1).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    return rows, lines


def parse_json(text: str, what: str) -> tuple[list[dict], list[int]]:
    """A .json text that is not an array: JSON lines, but not one object over several lines."""
    if text.startswith("{", _WS.match(text).end()) and "\n" in text.strip():
        try:
            whole = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            whole = None  # JSON lines, or broken: parse_jsonl names the line
        if isinstance(whole, dict):
            raise DataError(
                f"{what}: one JSON object over {text.strip().count(chr(10)) + 1} lines; expected an "
                "array of objects ([{...}, {...}]) or JSON lines (one object per line)"
            )
    return parse_jsonl(text, what)


def parse_csv(text: str, what: str) -> tuple[list[dict], list[int]]:
    """The rows of a CSV text (the header names the fields) and the line each starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records, end = [], 0
    limit = csv.field_size_limit(2**31 - 1)  # 128 KiB by default: a long document is a fine cell
    try:
        for record in reader:
            if record and not (len(record) == 1 and not record[0].strip()):  # blank: no record
                records.append((end + 1, record))
            end = reader.line_num
    except csv.Error as e:  # named by the line its record starts on
        why = "a quoted value is never closed" if str(e) == "unexpected end of data" else e
        raise DataError(f"{what} line {end + 1}: not valid CSV ({why})") from None
    finally:
        csv.field_size_limit(limit)
    if not records:
        return [], []
    (top, header), body = records[0], records[1:]
    repeated = next((h for n, h in enumerate(header) if h in header[:n]), None)
    if repeated is not None:
        raise DataError(
            f"{what} line {top}: the header names the column {repeated!r} twice; every column needs its own name"
        )
    if not body:
        raise DataError(f"{what}: no rows, only a header ({','.join(header)})")
    for line, record in body:
        if len(record) != len(header):
            raise DataError(
                f"{what} line {line} has {len(record)} field{'s' * (len(record) != 1)}, the header "
                f"has {len(header)} ({', '.join(header)})"
                + ("; quote a value that holds a comma" if len(record) > len(header) else "")
            )
    columns = [_typed([r[c] for _, r in body]) for c in range(len(header))]
    return [dict(zip(header, values)) for values in zip(*columns)], [line for line, _ in body]


def _typed(cells: list[str]) -> list:
    """A CSV column's values: None for empty cells; ints or bools where every other cell is one."""
    filled = [c for c in cells if c != ""]
    if filled and all(_INT.fullmatch(c) for c in filled):
        return [int(c) if c else None for c in cells]
    if filled and all(c.lower() in ("true", "false") for c in filled):
        return [c.lower() == "true" if c else None for c in cells]
    return [c if c else None for c in cells]


def _parquet(path: Path, what: str) -> list[dict]:
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(-min(4, len(head)), 2)
        tail = f.read(4)
    if head[:4] != b"PAR1" or len(head) < 8:
        raise DataError(
            f"{what}: not a Parquet file (Parquet files begin and end with the bytes PAR1; this one "
            f"begins with {head!r})"
        )
    if tail != b"PAR1":
        raise DataError(
            f"{what}: a Parquet file cut short (it begins with the bytes PAR1 but does not end with "
            "them: an interrupted copy or download?)"
        )
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).read().to_pylist()
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError, ...): name the file either way
        raise DataError(f"{what} as parquet: {type(e).__name__}: {e}") from None


def _file(path: Path, key: str, name: str) -> Rows:
    if path.is_dir():
        raise DataError(f"{key}: data file {path} is a folder; give a file ({', '.join(SUFFIXES)})")
    if not path.exists():
        raise DataError(f"{key}: data file {path} not found")
    if not path.is_file():
        raise DataError(
            f"{key}: data file {path} is not a regular file (a device or a pipe); the rows are read "
            "more than once, so give a file"
        )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{key}: {path} has suffix {path.suffix!r}; expected one of {list(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: the dataset is empty")
    what = f"{key}: cannot read {path}"
    if suffix == ".parquet":
        return Rows(_parquet(path, what), name)
    text = decode(path.read_bytes(), what)
    if suffix == ".json" and is_json_array(text):
        rows, lines = parse_json_array(text, what)
        return Rows(rows, name, lines, indexed=True)
    parse = {".jsonl": parse_jsonl, ".json": parse_json, ".csv": parse_csv}[suffix]
    rows, lines = parse(text, what)
    return Rows(rows, name, lines)


def _hub(name: str, split: str, key: str) -> list[dict]:
    import datasets

    repo, _, config = name.partition(":")  # hub:<name>[:<config>], e.g. hub:aps/super_glue:rte
    if not repo.strip():
        raise DataError(f"{key}='hub:{name}': no dataset name after hub: (hub:<name>[:<config>])")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:
        raise DataError(f"{key}: cannot load hub dataset {name!r} split {split!r}: {_root_cause(e)}") from None
    return ds.to_list()


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {e}"
