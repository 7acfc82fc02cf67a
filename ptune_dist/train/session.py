"""Everything a run needs before its first step: config resolved, data encoded, model built.

Shared by `ptune train`, `ptune eval` and `ptune predict`. Data problems surface before the base
weights load, so a bad file fails in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ptune_dist.data.prepare import TaskData, prepare_tasks, resolve_task
from ptune_dist.device import choose
from ptune_dist.errors import ConfigError
from ptune_dist.rank_env import DistEnv
from ptune_dist.methods import method_class
from ptune_dist.model.build import build_model
from ptune_dist.model.inspect import InspectedBase, inspect_base
from ptune_dist.model.load import load_base, load_tokenizer
from ptune_dist.model.prompt_model import PromptModel

from . import dist


@dataclass
class Session:
    cfg: object  # RunConfig with the tasks resolved
    tokenizer: object
    model: PromptModel
    tasks: list[TaskData]
    env: DistEnv
    device: torch.device  # this rank's, chosen once (ptune_dist.device.choose)
    keepalive: object = None  # HfDeepSpeedConfig under ZeRO-3: from_pretrained shards while it lives

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def prepare(cfg, splits=("train", "eval"), inspected: InspectedBase | None = None):
    """(resolved cfg, tokenizer, base info, task data): everything but the model weights. `inspected`: the
    run's inspect_base(cfg.model) (read here when not given)."""
    cls = method_class(cfg.method.name)
    inspected = inspected or inspect_base(cfg.model)
    info, kind = inspected.info, inspected.kind
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.data.padding_side)
    tasks = [resolve_task(t, kind, f"tasks.{i}", cfg.data.max_train_examples) for i, t in enumerate(cfg.tasks)]
    cfg = dataclasses.replace(cfg, tasks=tasks)
    num_virtual = cfg.method.num_virtual_tokens if cls.depth != "none" else 0
    return cfg, tokenizer, info, prepare_tasks(tasks, cfg.data, tokenizer, info, num_virtual, cls.depth, splits)


def build_session(cfg, splits=("train", "eval"), env: DistEnv | None = None, base=None) -> Session:
    """`base` = (hf_model, info) reuses a loaded base (tests, studies over many configs)."""
    env = env or DistEnv.from_environ()
    device = choose(cfg.train.device, env.local_rank)
    if base is not None and base[0].device.type != device.type:
        raise ConfigError(f"train.device={cfg.train.device} chose {device}, but the base handed in is on "
                          f"{base[0].device}; load it with load_base(..., device=...) or set train.device")
    dist.init(env, cfg.distributed.engine, cfg.distributed.timeout_s, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    inspected = inspect_base(cfg.model) if base is None else None  # the base's config, read once for the run
    cfg, tokenizer, _, data = prepare(cfg, splits, inspected or _handed(base))
    keepalive = None
    sharded = cfg.distributed.engine == "deepspeed" and cfg.distributed.zero_stage == 3
    if sharded and base is None and cfg.train.steps and "train" in splits:  # only a DeepSpeed engine gathers it
        from transformers.integrations import HfDeepSpeedConfig

        from .ds_engine import ds_config

        # the base loads already partitioned, in its own dtype: zero.Init casts to the dtype the config
        # enables (fp32 when none), so name it here; the engine's config stays fp32 (trainables are fp32)
        half = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype)
        keepalive = HfDeepSpeedConfig({**ds_config(cfg.distributed, cfg.train, cfg.data.batch_size, env.world), **({half: {"enabled": True}} if half else {})})
    base = base or load_base(cfg.model, trainable=method_class(cfg.method.name).trains_base, device=device,
                             inspected=inspected)
    model = build_model(cfg, [d.spec for d in data], tokenizer, base=base, device=device)
    return Session(cfg, tokenizer, model, data, env, device, keepalive)


def _handed(base) -> InspectedBase:
    """The InspectedBase of a base handed in as (hf_model, info): its loaded config, not read again."""
    model, info = base
    return InspectedBase(model.name_or_path, model.name_or_path, model.config, info.kind, info)


def baseline_view(session: Session) -> tuple[PromptModel, list[TaskData]]:
    """The same frozen base with no prompt, and the eval data encoded without virtual-token slots:
    the untuned (prompt design) number a prompt method should beat."""
    s = session
    m = s.model
    view = PromptModel(m.base, m.info, {}, dict(m.heads.items()), m.tasks, "none", m.attention_impl, s.device)
    data = prepare_tasks(s.cfg.tasks, s.cfg.data, s.tokenizer, m.info, 0, "none", splits=("eval",))
    return view, data
