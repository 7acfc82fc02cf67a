"""Greedy decoding with the prompt: one pass over the (left-padded) prompts, then one token at a time
against the KV cache. Deep prefixes are handed to attention at every step; they never enter the cache.

The tokens stay on the device while decoding: the one value read on the host per step is whether every
row has finished (the decision to stop); the tokens are copied to the host once, at the end."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy(model, batch: dict, max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """The generated token ids of every row (without the prompt, up to and without EOS). `batch` as collated
    with left padding (data/host.py describes it here if it was not)."""
    batch = model.describe(batch)
    mask = batch["attention_mask"]
    if batch["host"].padded and bool((mask[:, -1] == 0).any()):  # read once, not per token
        raise ValueError("generation needs left-padded prompts (collate with padding_side='left')")
    out = model.encode(batch, use_cache=True)
    B = mask.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=mask.device)
    steps = []  # [B] per step: the token, or EOS once a row has finished
    hidden = out.last_hidden_state[:, -1]
    carried = {k: batch[k] for k in ("seq_task", "host", "table_index")}
    for _ in range(max_new_tokens):
        nxt = model.lm_head(hidden).argmax(-1)
        steps.append(torch.where(done, eos_id, nxt))
        done |= nxt == eos_id
        if bool(done.all()):  # the one host read per token: whether to stop
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        step = {"input_ids": nxt[:, None], "attention_mask": mask, **carried}
        out = model.encode(step, past_key_values=out.past_key_values, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
    if not steps:
        return [[] for _ in range(B)]
    tokens = torch.stack(steps, dim=1).tolist()  # one copy to the host
    return [row[: row.index(eos_id)] if eos_id in row else row for row in tokens]
