"""Rows from a local file (JSON/JSONL/CSV/Parquet, read with `datasets`), the hub, or a built-in generator."""

from __future__ import annotations

from pathlib import Path

from ptune_dist.errors import DataError

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_rows(source: str, split: str, key: str, limit: int = 0) -> list[dict]:
    """The rows of `source` as dicts. `key` names the config entry in errors (e.g. tasks.0.train)."""
    if source.startswith("builtin:"):
        from .builtin import generate

        rows = generate(source[len("builtin:"):], split, key)
    elif source.startswith("hub:"):
        rows = _hub(source[len("hub:"):], split, key)
    else:
        rows = _file(Path(source), key)
    if not rows:
        raise DataError(f"{key}={source!r}: the dataset is empty")
    return rows[:limit] if limit else rows


def _file(path: Path, key: str) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{key}: data file {path} not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{key}: {path} has suffix {path.suffix!r}; expected one of {sorted(FORMATS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{key}={str(path)!r}: the dataset is empty")
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
    return ds.to_list()


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
