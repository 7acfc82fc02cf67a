"""Losses and predictions per task type, computed only where there are labels.

No [batch, seq, vocab] logits are built: the LM head runs on the hidden states of the answer
positions (classification) or of the labelled positions (generation) alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Output:
    loss: torch.Tensor | None = None  # mean over the batch's rows (classification) or label tokens
    preds: list = field(default_factory=list)  # per row: a class index, or a list of tag indices
    scores: list = field(default_factory=list)  # per row: the class scores (classification)
    correct: int = 0  # token-level hits for generation
    count: int = 0  # what `loss` is the mean over


def word_table(label_word_ids: list[list[int]]) -> torch.Tensor:
    """[C, W] token ids of every label's words, padded with -1."""
    if not label_word_ids:
        return torch.empty(0, 0, dtype=torch.long)
    width = max(len(ws) for ws in label_word_ids)
    return torch.tensor([ws + [-1] * (width - len(ws)) for ws in label_word_ids], dtype=torch.long)


def groups(model, task_ids: torch.Tensor) -> list:
    """(task index, row indices) for every task present in the batch; while training, for every task of
    the batch's type (rows may be empty), so every rank calls every head and the same ZeRO collectives."""
    if model.training and torch.is_grad_enabled():
        kind = model.tasks[int(task_ids[0])].type
        tasks = [i for i, spec in enumerate(model.tasks) if spec.type == kind]
    else:
        tasks = task_ids.unique().tolist()
    return [(t, (task_ids == t).nonzero(as_tuple=True)[0]) for t in tasks]


def text_mask(batch: dict) -> torch.Tensor:
    """Real text tokens: not padding, not virtual-token slots."""
    mask = batch["attention_mask"].bool()
    return mask & ~batch["soft_mask"] if "soft_mask" in batch else mask


def label_scores(logprobs: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """[n, V] log-probabilities -> [n, C]: log of the summed probability of each label's words."""
    picked = logprobs[:, words.clamp(min=0)]  # [n, C, W]
    return picked.masked_fill(words < 0, float("-inf")).logsumexp(-1)


def classification(model, hidden, batch) -> Output:
    B = hidden.shape[0]
    labels = batch.get("labels")
    out = Output(preds=[None] * B, scores=[None] * B, count=B)
    logprobs, parts = None, groups(model, batch["task_ids"])
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
        for r, s in zip(rows.tolist(), scores.detach().cpu()):  # one copy to the host, not one per row
            out.preds[r], out.scores[r] = int(s.argmax()), s.tolist()
    out.loss = loss / B if labels is not None else None
    return out


def generation(model, hidden, batch) -> Output:
    """Next-token loss on the labelled (output) tokens only."""
    target = batch["labels"][:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[:, :-1][keep]).float()
    gold = target[keep]
    n = int(gold.numel())
    loss = F.cross_entropy(logits, gold, reduction="sum") / max(n, 1)
    correct = 0 if torch.is_grad_enabled() else int((logits.argmax(-1) == gold).sum())  # for evaluation only
    return Output(loss=loss, correct=correct, count=n)


def token_classification(model, hidden, batch) -> Output:
    labels = batch.get("labels")
    B = hidden.shape[0]
    out = Output(preds=[None] * B)
    loss = hidden.new_zeros((), dtype=torch.float32)
    for t, rows in groups(model, batch["task_ids"]):
        logits = model.heads[model.tasks[t].name](hidden[rows]).float()  # [n, T, C]
        if labels is not None:
            lab = labels[rows]
            loss = loss + F.cross_entropy(logits[lab != -100], lab[lab != -100], reduction="sum")
        for r, row_preds in zip(rows.tolist(), logits.detach().argmax(-1).tolist()):
            out.preds[r] = row_preds
    if labels is not None:
        out.count = int((labels != -100).sum())
        out.loss = loss / max(out.count, 1)
    return out


COMPUTE = {"classification": classification, "generation": generation,
           "token_classification": token_classification}


def compute(model, hidden, batch) -> Output:
    return COMPUTE[model.tasks[int(batch["task_ids"][0])].type](model, hidden, batch)
