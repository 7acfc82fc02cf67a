"""Greedy decoding with the prompt: one pass over the (left-padded) prompts, then one token at a time
against the KV cache. Deep prefixes are handed to attention at every step; they never enter the cache."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy(model, batch: dict, max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """The generated token ids of every row (without the prompt, up to and without EOS)."""
    mask = batch["attention_mask"]
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("generation needs left-padded prompts (collate with padding_side='left')")
    out = model.encode(batch, use_cache=True)
    B = mask.shape[0]
    tokens, done = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool, device=mask.device)
    hidden = out.last_hidden_state[:, -1]
    for _ in range(max_new_tokens):
        nxt = model.lm_head(hidden).argmax(-1)
        done |= nxt == eos_id
        finished = done.tolist()  # copies to the host once per step, not once per row
        for i, token in enumerate(nxt.tolist()):
            if not finished[i]:
                tokens[i].append(token)
        if all(finished):
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        step = {"input_ids": nxt[:, None], "attention_mask": mask, "task_ids": batch["task_ids"]}
        out = model.encode(step, past_key_values=out.past_key_values, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
    return tokens
