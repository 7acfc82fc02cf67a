"""Evaluation: per-task metrics from sums that add up across batches and ranks.

classification and token_classification: accuracy and macro-F1 from a confusion matrix, plus the
loss; generation: the loss on the output tokens, its perplexity and next-token accuracy. With
`pack_to` (data.packing) the examples run in packed rows (data/packed_loader.py), with the same metrics.
"""

from __future__ import annotations

import math

import torch

from ptune_dist.data.batch import is_packed
from ptune_dist.data.loader import eval_batches
from ptune_dist.data.packed_loader import packed_eval_batches
from ptune_dist.device import to_device

from . import dist


def _confusion(gold, pred, n: int) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.float64)
    for g, p in zip(gold, pred):
        m[g, p] += 1
    return m


def _f1(conf: torch.Tensor) -> float:
    tp = conf.diag()
    precision = tp / conf.sum(0).clamp(min=1)
    recall = tp / conf.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = (conf.sum(1) + conf.sum(0)) > 0
    return float(f1[present].mean()) if present.any() else 0.0


def class_metrics(gold: list[int], pred: list[int], n: int) -> dict:
    """Accuracy and macro-F1 of class predictions against gold classes (n classes)."""
    conf = _confusion(gold, pred, n)
    return {"accuracy": float(conf.diag().sum() / max(len(gold), 1)), "macro_f1": _f1(conf), "examples": len(gold)}


def batch_sums(spec, out, batch) -> torch.Tensor:
    """A flat float64 vector of this batch's sums: [loss_sum, count, correct] or a confusion matrix + loss."""
    if spec.type == "generation":
        return torch.tensor([float(out.total), out.count, out.correct], dtype=torch.float64)
    labels = batch["labels"]
    n = len(spec.labels)
    if spec.type == "classification":
        conf = _confusion(labels.tolist(), out.preds, n)
    else:  # each sequence's tags against its predictions, position by position
        pairs = [(g, p) for g_row, p_row in zip(gold_rows(batch), out.preds) for g, p in zip(g_row, p_row)]
        gold, pred = [g for g, _ in pairs], [p for _, p in pairs]
        keep = [i for i, g in enumerate(gold) if g != -100]
        conf = _confusion([gold[i] for i in keep], [pred[i] for i in keep], n)
    return torch.cat([torch.tensor([float(out.total)]), conf.flatten()])


def gold_rows(batch) -> list[list[int]]:
    """Per-token labels, one list per sequence: the batch's rows, or a packed batch's sequences (the rows
    its predictions come in: model/unpack.py)."""
    labels = batch["labels"]
    if not is_packed(batch):
        return labels.tolist()
    where = zip(batch["seq_row"].tolist(), batch["seq_start"].tolist(), batch["seq_len"].tolist())
    return [labels[r, start : start + n].tolist() for r, start, n in where]


def metrics_from(spec, sums: torch.Tensor) -> dict:
    if spec.type == "generation":
        loss = float(sums[0] / max(sums[1], 1))
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50)),
            "token_accuracy": float(sums[2] / max(sums[1], 1)),
            "examples_tokens": int(sums[1]),
        }
    n = len(spec.labels)
    conf = sums[1:].view(n, n)
    count = float(conf.sum())
    return {
        "loss": float(sums[0] / max(count, 1)),
        "accuracy": float(conf.diag().sum() / max(count, 1)),
        "macro_f1": _f1(conf),
        "examples": int(count),
    }


@torch.no_grad()
def evaluate(
    model,
    tasks,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    pack_to: int | None = None,
) -> dict:
    """{task name: metrics} for every task with evaluation data, the batches run on `device` (default: the
    model's). `pack_to`: data.max_length when the examples run packed, `batch_size` rows a batch. Every
    rank must call it."""
    device = device or model.device
    was_training = model.training
    model.eval()
    results = {}
    for t in tasks:
        if not t.eval:
            continue
        sums = None
        if pack_to:
            batches = packed_eval_batches(t.eval, batch_size, pad_id, model.row_capacity(pack_to), rank, world)
        else:
            batches = eval_batches(t.eval, batch_size, pad_id, padding_side, rank, world)
        for batch in batches:
            batch = model.describe(batch)  # what the host needs, from the CPU tensors (data/host.py)
            out = model(to_device(batch, device))
            if batch.get("skip"):
                continue
            s = batch_sums(t.spec, out, batch)
            sums = s if sums is None else sums + s
        if sums is None:  # this rank's share is empty
            size = 3 if t.spec.type == "generation" else 1 + len(t.spec.labels) ** 2
            sums = torch.zeros(size, dtype=torch.float64)
        results[t.spec.name] = metrics_from(t.spec, dist.all_reduce_sum(sums))
    model.train(was_training)
    return results
