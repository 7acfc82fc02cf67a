"""`ptune eval` and `ptune predict`: load a run's trained prompts onto the base and use them.

A run folder resolves to its final/ weights (or its newest complete checkpoint); a checkpoint folder
is used as it is. The config comes from the checkpoint's config.yaml, with overrides on top.

`predict` reads its --input JSONL like a task's JSONL file (ptune_dist.data.sources: UTF-8, one
object per line, errors name the line; a pipe is read too, /dev/null holds no rows) and checks every
row as training does (ptune_dist.data.rows), but a row that does not fit is always an error, whatever
data.on_bad_row says: the output has one line per input row. --output is checked before the model
loads (not a folder, not the input, its folder writable; an existing non-empty file only with force,
which says on stderr what it replaced) and written atomically: a temporary file in the same folder,
then os.replace, so a failure never leaves half a file. A device or a pipe (/dev/null, /dev/full) and
stdout ("-") are written as they are: a write error is a DataError naming --output, except that a
reader of stdout that stops early (`| head`) ends the command quietly, as Unix tools do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from ptune_dist.checkpoint import state as ckpt
from ptune_dist.checkpoint.locate import resolve_checkpoint
from ptune_dist.checkpoint.target import check_output, run_of, write_atomic
from ptune_dist.config import load_config
from ptune_dist.data.collate import collate
from ptune_dist.data.packing import collate_packed, pack
from ptune_dist.data.rows import Rows
from ptune_dist.data.sources import decode, parse_jsonl
from ptune_dist.device import to_device
from ptune_dist.errors import DataError
from ptune_dist.model.generate import greedy
from ptune_dist.train.evaluate import evaluate
from ptune_dist.train.session import build_session


def load_session(path, overrides=(), splits=("eval",)):
    folder = resolve_checkpoint(path)
    cfg = load_config([folder / "config.yaml"], list(overrides))
    # no optimizer, nothing to shard: evaluation and prediction run the plain engine on every rank
    cfg = dataclasses.replace(cfg, distributed=dataclasses.replace(cfg.distributed, engine="torch"))
    s = build_session(cfg, splits=splits)
    ckpt.load_weights(folder, s.model)
    s.model.eval()
    return s


def evaluate_checkpoint(path, overrides=()) -> dict:
    s = load_session(path, overrides)
    if not any(t.eval for t in s.tasks):
        raise DataError("tasks.*.eval: no evaluation data configured (set tasks.N.eval=...)")
    d = s.cfg.data
    return evaluate(
        s.model,
        s.tasks,
        d.eval_batch_size,
        s.pad_id,
        d.padding_side,
        s.env.rank,
        s.env.world,
        s.device,
        pack_to=d.max_length if d.packing else None,
    )


def read_jsonl(path: Path) -> Rows:
    """The rows of a predict --input file, each named by its line. It is read once, so a pipe or a device
    is read as it is (`--input <(zcat in.jsonl.gz)`); /dev/null holds no rows."""
    path = Path(path)
    name = f"--input {path}"
    if path.is_dir():
        raise DataError(f"{name} is a folder, not a JSONL file")
    if not path.exists():
        raise DataError(f"{name}: file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{name}: cannot read ({e.strerror})") from None
    rows, lines = parse_jsonl(decode(data, name), name)
    if not rows:
        raise DataError(f"{name}: no rows ({'the file is empty' if not data else 'only blank lines'})")
    return Rows(rows, name, lines)


def predict_rows(s, rows: list[dict], where: str) -> list[dict]:
    """One result per row; rows may name their task (`task`), so one batch can mix tasks. A Rows names
    each row by its line in errors, a plain list by `where` and its index."""
    names = [t.spec.name for t in s.tasks]
    examples = []
    for i, row in enumerate(rows):
        at = rows.where(i) if isinstance(rows, Rows) else f"{where} row {i}"
        name = row.get("task", names[0] if len(names) == 1 else None)
        if not isinstance(name, str) or name not in names:
            raise DataError(f"{at}: task {name!r} is not one of {names}")
        t = s.tasks[names.index(name)]
        fields = {k: v for k, v in row.items() if k != "task" and k not in t.encoder.target_fields}
        examples.append(t.encoder.encode(fields, at, labelled=False))
    results = []
    for rows in _batches(s, examples):
        results.extend(_predict_batch(s, [[examples[i] for i in row] for row in rows]))
    return results


def _batches(s, examples) -> list[list[list[int]]]:
    """The examples' indices, in order, as batches of data.eval_batch_size rows: one example a row, or with
    data.packing (and no generation task, whose decoding runs one example a row) packed rows."""
    d, n = s.cfg.data, len(examples)
    if d.packing and not any(t.spec.type == "generation" for t in s.tasks):
        rows = pack([len(ex.input_ids) for ex in examples], s.model.row_capacity(d.max_length), window=1)
    else:
        rows = [[i] for i in range(n)]
    return [rows[i : i + d.eval_batch_size] for i in range(0, len(rows), d.eval_batch_size)]


def _predict_batch(s, rows) -> list[dict]:
    """One result per example of `rows` (lists of examples: one each, or packed), row by row."""
    chunk = [ex for row in rows for ex in row]
    spec0 = s.tasks[chunk[0].task_id].spec
    if spec0.type == "generation":
        batch = to_device(s.model.describe(collate(chunk, s.pad_id, "left")), s.device)
        limits = [s.tasks[ex.task_id].spec.max_new_tokens for ex in chunk]
        out = greedy(s.model, batch, max(limits), s.tokenizer.eos_token_id)
        return [
            {"task": s.tasks[ex.task_id].spec.name, "output": s.tokenizer.decode(ids[:limit], skip_special_tokens=True)}
            for ex, ids, limit in zip(chunk, out, limits)
        ]
    d = s.cfg.data
    if d.packing:  # each sequence's predictions come back as a row of their own, right-padded (model/unpack.py)
        batch, side = collate_packed(rows, s.pad_id), "right"
    else:
        batch, side = collate(chunk, s.pad_id, d.padding_side), d.padding_side
    batch.pop("labels", None)
    with torch.no_grad():
        out = s.model(to_device(s.model.describe(batch), s.device))
    results = []
    for i, ex in enumerate(chunk):
        spec = s.tasks[ex.task_id].spec
        if spec.type == "classification":
            probs = torch.tensor(out.scores[i]).softmax(-1).tolist()
            results.append(
                {"task": spec.name, "label": spec.labels[out.preds[i]], "scores": dict(zip(spec.labels, probs))}
            )
        else:  # token classification: the tag of each word's first sub-token
            off = batch["input_ids"].shape[1] - len(ex.input_ids) if side == "left" else 0
            first = [p + off for p, lab in enumerate(ex.labels) if lab != -100]
            results.append({"task": spec.name, "tags": [spec.labels[out.preds[i][p]] for p in first]})
    return results


def predict_file(path, input_file, output: str, overrides=(), force: bool = False) -> None:
    """Predict for the rows of `input_file` into `output` ("-": stdout); an existing non-empty `output` is
    replaced only with `force`."""
    how = check_output(output, input_file, force, inputs=[path, run_of(path)])  # never into the run it reads
    rows = read_jsonl(Path(input_file))
    s = load_session(path, overrides, splits=())
    results = predict_rows(s, rows, f"--input {input_file}")
    text = "".join(json.dumps(r) + "\n" for r in results)
    if output == "-":
        _to_stdout(text)
    elif how == "stream":
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise DataError(f"--output {output}: cannot write ({e.strerror or e})") from None
    else:
        write_atomic(Path(output), text)
        if how == "replace":
            print(f"ptune predict: replaced the file {output} (--force)", file=sys.stderr)


def _to_stdout(text: str) -> None:
    """`text` on stdout. A reader that stops early (`| head`) ends the command quietly, as Unix tools do;
    other write errors (a full disk) are a DataError."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        try:  # what is still buffered would fail again when Python exits: send it nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # no file descriptor (a test's capture)
            pass
    except OSError as e:
        raise DataError(f"--output -: cannot write to stdout ({e.strerror or e})") from None
