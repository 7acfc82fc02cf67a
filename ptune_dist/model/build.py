"""Build the PromptModel of a run: load the base, make one prompt per task, add the heads.

Every random choice comes from generators seeded by `train.seed` and the task index, so all ranks
build identical prompts without talking to each other.
"""

from __future__ import annotations

import contextlib

import torch

from ptune_dist.config.schema import MethodConfig, ModelConfig
from ptune_dist.data.task import TaskSpec
from ptune_dist.methods import InitContext, PromptMethod, method_class

from .heads import SequenceClassificationHead, TokenClassificationHead
from .load import load_base
from .prompt_model import PromptModel


def build_model(
    method_cfg: MethodConfig,
    model_cfg: ModelConfig,
    seed: int,
    specs: list[TaskSpec],
    tokenizer,
    base=None,
    device: torch.device | None = None,
    method: type[PromptMethod] | None = None,
) -> PromptModel:
    """`base` = (hf_model, info) reuses an already loaded base (tests, scale studies); `method`: the class of
    method_cfg.name when the caller has it; `seed`: train.seed. The prompts are made on the CPU (the same
    numbers on every device), then moved with the heads to `device` (default: where the base's embeddings
    are) in fp32: master weights whatever the base's dtype."""
    cls = method or method_class(method_cfg.name)
    model, info = base or load_base(model_cfg, trainable=cls.trains_base, device=device)
    embed = model.get_input_embeddings()
    lookup = gathered_lookup(embed)
    prompts, heads = {}, {}
    head_dropout = 0.1 if model_cfg.dropout is None else model_cfg.dropout
    for i, spec in enumerate(specs):
        task_seed = seed * 1009 + i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task_seed)
            if cls.placement.learned:
                ctx = InitContext(
                    embed=lookup,
                    tokenizer=tokenizer,
                    label_words=[w for words in spec.label_words for w in words] or spec.labels,
                    generator=torch.Generator().manual_seed(task_seed),
                )
                prompts[spec.name] = cls(method_cfg, info, ctx)
            if spec.type == "token_classification":
                heads[spec.name] = TokenClassificationHead(info.hidden_size, len(spec.labels), head_dropout)
            elif spec.uses_head:
                heads[spec.name] = SequenceClassificationHead(
                    info.hidden_size, len(spec.labels), spec.pooling, head_dropout
                )
    device = device or embed.weight.device
    for module in (*prompts.values(), *heads.values()):
        module.to(device)
    return PromptModel(model, info, prompts, heads, specs, cls.placement, model_cfg.attention, device)


def gathered_lookup(embed):
    """ids -> embeddings, also when ZeRO-3 holds only a partition of the matrix on this rank (then every
    rank must call it: gathering is a collective; all ranks build the same prompts, so they do)."""

    def lookup(ids):
        with contextlib.ExitStack() as stack:
            if hasattr(embed.weight, "ds_id"):
                import deepspeed

                stack.enter_context(deepspeed.zero.GatheredParameters([embed.weight]))
            return embed(ids.to(embed.weight.device)).cpu()

    return lookup
