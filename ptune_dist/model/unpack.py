"""A packed batch's hidden states seen as the unpacked batch they stand for, so that every loss, metric
and head (model/objectives.py, heads.py) runs on it exactly as on sequences collated one per row.

    unpack(hidden [B, T, H], packed batch) -> (hidden [S, L, H], batch of S right-padded rows)

(the batch described by data/host.py: L, its HostInfo.longest, is read on the host; the view keeps the HostInfo,
whose unit was the sequence already)

S sequences (data/packing.py's seq_row / seq_start / seq_len), L the longest; the view's attention_mask,
soft_mask, answer_pos and labels are each sequence's own, and its padding holds zeros and IGNORE labels.
The gather is one index per token: no per-sequence loop.
"""

from __future__ import annotations

import torch

from ptune_dist.data.encode import IGNORE


def unpack(hidden: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
    rows, starts, lengths = batch["seq_row"], batch["seq_start"], batch["seq_len"]
    T = hidden.shape[1]
    offsets = torch.arange(batch["host"].longest, device=hidden.device)  # L, read on the host (data/host.py)
    valid = offsets[None] < lengths[:, None]  # [S, L]
    where = (rows[:, None], (starts[:, None] + offsets[None]).clamp(max=T - 1))

    def take(t, fill):
        picked = t[where]
        return torch.where(valid, picked, torch.full_like(picked, fill))

    view = {
        "input_ids": take(batch["input_ids"], 0),
        "attention_mask": valid.long(),
        "seq_task": batch["seq_task"],
        **{k: batch[k] for k in ("host", "group_order", "table_index")},
        "answer_pos": torch.where(batch["answer_pos"] >= 0, batch["answer_pos"] - starts, batch["answer_pos"]),
    }
    if "soft_mask" in batch:
        view["soft_mask"] = take(batch["soft_mask"], False)
    if "labels" in batch:
        labels = batch["labels"]
        view["labels"] = take(labels, IGNORE) if labels.dim() == 2 else labels
    return torch.where(valid[..., None], hidden[where], 0.0), view
