"""Everything a run needs before its first step: config resolved, data encoded, model built.

Shared by `ptune train`, `ptune eval` and `ptune predict`. Data problems surface before the base
weights load, so a bad file fails in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ptune_dist.config.schema import RunConfig
from ptune_dist.data.prepare import TaskData, prepare_tasks, resolve_task
from ptune_dist.errors import ConfigError
from ptune_dist.methods import PromptMethod, method_class
from ptune_dist.methods.placement import NONE
from ptune_dist.model.build import build_model
from ptune_dist.model.inspect import InspectedBase, check_weights, inspect_base
from ptune_dist.model.load import load_tokenizer
from ptune_dist.model.prompt_model import PromptModel
from ptune_dist.rank_env import DistEnv

from .placement import Placement, place


@dataclass
class Session:
    cfg: RunConfig  # the tasks resolved
    tokenizer: PreTrainedTokenizerBase
    model: PromptModel
    tasks: list[TaskData]
    env: DistEnv
    placement: Placement  # this rank's device, chosen once, and what ZeRO-3 loading needs alive

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def prepare(
    cfg: RunConfig,
    splits=("train", "eval"),
    inspected: InspectedBase | None = None,
    method: type[PromptMethod] | None = None,
):
    """(resolved cfg, tokenizer, base info, task data): everything but the model weights. `inspected`, `method`:
    the run's inspect_base(cfg.model) and method class (found here when not given)."""
    cls = method or method_class(cfg.method.name)
    inspected = inspected or inspect_base(cfg.model)
    info, kind = inspected.info, inspected.kind
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.data.padding_side)
    tasks = [resolve_task(t, kind, f"tasks.{i}", cfg.data.max_train_examples) for i, t in enumerate(cfg.tasks)]
    cfg = dataclasses.replace(cfg, tasks=tasks)
    return (
        cfg,
        tokenizer,
        info,
        prepare_tasks(tasks, cfg.data, tokenizer, info, cfg.method.num_virtual_tokens, cls.placement, splits),
    )


def build_session(cfg: RunConfig, splits=("train", "eval"), env: DistEnv | None = None, base=None) -> Session:
    """`base` = (hf_model, info) reuses a loaded base (tests, studies over many configs)."""
    env = env or DistEnv.from_environ()
    method = method_class(cfg.method.name)
    placement = place(
        cfg.train,
        cfg.distributed,
        cfg.data.batch_size,
        env,
        trains=base is None and bool(cfg.train.steps) and "train" in splits,
    )
    if base is not None and base[0].device.type != placement.device.type:
        raise ConfigError(
            f"train.device={cfg.train.device} chose {placement.device}, but the base handed in is on "
            f"{base[0].device}; load it with load_base(..., device=...) or set train.device"
        )
    inspected = inspect_base(cfg.model) if base is None else _handed(base)  # the base's config, read once
    if base is None:
        check_weights(cfg.model.name_or_path)  # before the data: a pickle-only folder would fail after it
    cfg, tokenizer, _, data = prepare(cfg, splits, inspected, method)
    base = base or placement.load_base(cfg.model, inspected, trainable=method.trains_base)
    model = build_model(
        cfg.method,
        cfg.model,
        cfg.train.seed,
        [d.spec for d in data],
        tokenizer,
        base=base,
        device=placement.device,
        method=method,
    )
    return Session(cfg, tokenizer, model, data, env, placement)


def _handed(base) -> InspectedBase:
    """The InspectedBase of a base handed in as (hf_model, info): its loaded config, not read again."""
    model, info = base
    return InspectedBase(model.name_or_path, model.name_or_path, model.config, info.kind, info)


def baseline_view(session: Session) -> tuple[PromptModel, list[TaskData]]:
    """The same frozen base with no prompt, and the eval data encoded without virtual-token slots:
    the untuned (prompt design) number a prompt method should beat."""
    s = session
    m = s.model
    view = PromptModel(m.base, m.info, {}, dict(m.heads.items()), m.tasks, NONE, m.attention_impl, s.device)
    data = prepare_tasks(s.cfg.tasks, s.cfg.data, s.tokenizer, m.info, 0, NONE, splits=("eval",))
    return view, data
