"""Losses and predictions per task type, computed only where there are labels, without reading the device.

No [batch, seq, vocab] logits are built: the LM head runs on the hidden states of the answer positions
(classification) or of the positions that predict a label (generation) alone. What the host must know (the
tasks present, their sequences, the counts, the label positions) comes from the batch's HostInfo
(data/host.py), read on the CPU before the batch moved, so a training step asks the device for nothing.
Predictions and scores stay on the device until someone reads `Output.preds` / `scores` / `correct`
(evaluation and predict do, once per batch; training never does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptune_dist.data.encode import IGNORE
from ptune_dist.data.host import describe


class Output:
    """total: the loss summed over the batch's `count` targets (sequences for classification, label tokens
    otherwise), a 0-dim device tensor, or None without labels; the objectives never divide it: how much a
    target counts in an update is train/loss_weights.py's one decision. `loss` is its mean over the targets,
    for whoever reports one batch alone. preds (per sequence: a class index, or a list of tag indices), scores
    (per sequence: the class scores)
    and correct (generation: next-token hits) are copied to the host when first read."""

    def __init__(
        self,
        total: torch.Tensor | None = None,
        count: int = 0,
        sequences: int = 0,
        parts: list | None = None,
        correct: torch.Tensor | int = 0,
    ):
        self.total, self.count = total, count
        self._sequences, self._parts, self._correct = sequences, parts or [], correct
        self._host = None

    def _read(self):
        """(preds, scores) on the host: one copy per group of sequences (those of one task)."""
        if self._host is None:
            preds, scores = [None] * self._sequences, [None] * self._sequences
            for rows, values, kind in self._parts:
                values = values.cpu()
                for r, v in zip(rows.tolist(), values):
                    if kind == "scores":
                        preds[r], scores[r] = int(v.argmax()), v.tolist()
                    else:
                        preds[r] = v.tolist()
            self._host = (preds, scores)
        return self._host

    @property
    def loss(self) -> torch.Tensor | None:
        """The mean over the targets (None without labels)."""
        return None if self.total is None else self.total / max(self.count, 1)

    @property
    def preds(self) -> list:
        return self._read()[0]

    @property
    def scores(self) -> list:
        return self._read()[1]

    @property
    def correct(self) -> int:
        return int(self._correct)


def word_table(label_word_ids: list[list[int]]) -> torch.Tensor:
    """[C, W] token ids of every label's words, padded with -1."""
    if not label_word_ids:
        return torch.empty(0, 0, dtype=torch.long)
    width = max(len(ws) for ws in label_word_ids)
    return torch.tensor([ws + [-1] * (width - len(ws)) for ws in label_word_ids], dtype=torch.long)


def groups(model, batch: dict) -> list:
    """(task index, sequence indices on the device) for every task present in the batch; while training, for every
    task of the batch's type (sequences may be none), so every rank calls every head and the same ZeRO collectives."""
    host, order = batch["host"], batch["group_order"]
    present = {t: order[start:end] for t, start, end in host.groups}
    if model.training and torch.is_grad_enabled():
        tasks = [i for i, spec in enumerate(model.tasks) if spec.type == host.task_type]
    else:
        tasks = list(present)
    return [(t, present.get(t, order[:0])) for t in tasks]


def text_mask(batch: dict) -> torch.Tensor:
    """Real text tokens: not padding, not virtual-token slots."""
    mask = batch["attention_mask"].bool()
    return mask & ~batch["soft_mask"] if "soft_mask" in batch else mask


def label_scores(logprobs: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """[n, V] log-probabilities -> [n, C]: log of the summed probability of each label's words."""
    picked = logprobs[:, words.clamp(min=0)]  # [n, C, W]
    return picked.masked_fill(words < 0, float("-inf")).logsumexp(-1)


def classification(model, hidden, batch) -> Output:
    B = batch["host"].sequences
    labels = batch.get("labels")
    logprobs, parts, scored = None, groups(model, batch), []
    if any(not model.tasks[t].uses_head for t, _ in parts):
        answer = hidden[torch.arange(B, device=hidden.device), batch["answer_pos"]]
        logprobs = F.log_softmax(model.lm_head(answer).float(), dim=-1)
    loss = hidden.new_zeros((), dtype=torch.float32)
    for t, rows in parts:
        spec = model.tasks[t]
        if spec.uses_head:
            scores = model.heads[spec.name](hidden[rows], text_mask(batch)[rows]).float()
        else:
            scores = label_scores(logprobs[rows], model.words(t))
        if labels is not None:
            loss = loss + F.cross_entropy(scores, labels[rows], reduction="sum")
        scored.append((rows, scores.detach(), "scores"))
    return Output(total=loss if labels is not None else None, count=B, sequences=B, parts=scored)


def generation(model, hidden, batch) -> Output:
    """Next-token loss on the labelled (output) tokens only: hidden [B, T, H] (packed rows as they are; the
    label positions never cross from one packed sequence into the next, data/host.py label_positions)."""
    index, gold = batch["label_index"], batch["label_gold"]
    n = batch["host"].targets
    logits = model.lm_head(hidden.flatten(0, 1).index_select(0, index)).float()
    loss = F.cross_entropy(logits, gold, reduction="sum")
    correct = 0 if torch.is_grad_enabled() else (logits.argmax(-1) == gold).sum()  # for evaluation only
    return Output(total=loss, count=n, correct=correct)


def token_classification(model, hidden, batch) -> Output:
    labels = batch.get("labels")
    host = batch["host"]
    loss = hidden.new_zeros((), dtype=torch.float32)
    tagged = []
    for t, rows in groups(model, batch):
        logits = model.heads[model.tasks[t].name](hidden[rows]).float()  # [n, T, C]
        if labels is not None:
            loss = loss + F.cross_entropy(
                logits.flatten(0, 1), labels[rows].flatten(), ignore_index=IGNORE, reduction="sum"
            )
        tagged.append((rows, logits.detach().argmax(-1), "tags"))
    count = host.targets if labels is not None else 0
    return Output(total=loss if labels is not None else None, count=count, sequences=host.sequences, parts=tagged)


COMPUTE = {"classification": classification, "generation": generation, "token_classification": token_classification}


def compute(model, hidden, batch) -> Output:
    """The batch's objective; a batch without HostInfo (a caller that skipped data/host.py) is described here."""
    if "host" not in batch:
        batch = describe(batch, [spec.type for spec in model.tasks])
    return COMPUTE[batch["host"].task_type](model, hidden, batch)
