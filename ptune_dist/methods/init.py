"""Initial virtual-token embeddings: random uniform, sampled vocabulary, a text, the class-label words."""

from __future__ import annotations

import torch

from ptune_dist.errors import ConfigError

from .base import InitContext
from .config import INITS, LABELS, RANDOM, TEXT, VOCAB

COMMON_VOCAB = 5000  # Lester et al. sample from the 5,000 most common tokens; BPE ids roughly follow frequency


def token_embeddings(init: str, P: int, H: int, ctx: InitContext, scale: float, text: str = "") -> torch.Tensor:
    """[P, H] float32 embeddings for `init`, one of config.INITS."""
    if init == RANDOM:
        return (torch.rand(P, H, generator=ctx.generator) * 2 - 1) * scale
    if init == VOCAB:
        return _embed(ctx, _sample_vocab(ctx, P))
    if init == TEXT:
        ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"method.init_text={text!r} tokenizes to nothing")
        ids = (ids * (P // len(ids) + 1))[:P]  # repeat or trim to P tokens, as PEFT does
        return _embed(ctx, torch.tensor(ids))
    if init == LABELS:
        if not ctx.label_words:
            raise ConfigError("method.init=labels: the tasks define no label words")
        rows = []
        for word in ctx.label_words[:P]:  # one slot per label word: the mean of its token embeddings
            ids = ctx.tokenizer(word, add_special_tokens=False)["input_ids"]
            rows.append(_embed(ctx, torch.tensor(ids)).mean(0))
        out = torch.stack(rows)
        if len(rows) < P:  # the rest from the common vocabulary, as in Lester et al.
            out = torch.cat([out, _embed(ctx, _sample_vocab(ctx, P - len(rows)))])
        return out
    raise ConfigError(f"method.init={init!r} is not one of {', '.join(INITS)}")


def _sample_vocab(ctx: InitContext, n: int) -> torch.Tensor:
    special = set(getattr(ctx.tokenizer, "all_special_ids", []) or [])
    hi = min(len(ctx.tokenizer), COMMON_VOCAB)
    pool = torch.tensor([i for i in range(hi) if i not in special])
    return pool[torch.randint(len(pool), (n,), generator=ctx.generator)]


def _embed(ctx: InitContext, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ctx.embed(ids).detach().float().clone()
