"""Where this rank's model lives, decided in one step and handed down (as torchtitan does).

    place(train, distributed, batch_size, env, trains) -> Placement
        the rank's device (ptune_dist.device.choose: cuda:LOCAL_RANK when there is a GPU, else the CPU),
        the process group joined on the backend that device needs (dist.init), torch's thread count, and,
        for a DeepSpeed ZeRO-3 run that trains, the DeepSpeed config under which the base loads already
        partitioned over the ranks
    Placement.load_base(model_cfg, inspected, trainable) -> (hf_model, info)
        the frozen base loaded there: straight onto the device, or partitioned by ZeRO-3 (a HfDeepSpeedConfig
        that lives as long as the Placement: transformers asks it whether to gather weights), quantised,
        with gradient checkpointing and the dropout setting applied (model/load.py)

Nothing else decides the device or sets up ZeRO-3 loading; the engine (engine.py, ds_engine.py) takes
the model as placed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptune_dist.config.schema import DistributedConfig, ModelConfig, TrainConfig
from ptune_dist.device import choose
from ptune_dist.model.inspect import InspectedBase
from ptune_dist.model.load import load_base
from ptune_dist.rank_env import DistEnv

from . import dist
from .ds_engine import ds_config

HALF = {"bfloat16": "bf16", "float16": "fp16"}


@dataclass
class Placement:
    device: torch.device
    zero3: dict | None = None  # the DeepSpeed config a ZeRO-3 run's base loads under (partitioned), else None
    keepalive: object = None  # the HfDeepSpeedConfig made from it: from_pretrained shards while it lives

    def load_base(self, model_cfg: ModelConfig, inspected: InspectedBase, trainable: bool):
        if self.zero3 is not None and self.keepalive is None:
            from transformers.integrations import HfDeepSpeedConfig

            # the base loads in its own dtype: zero.Init casts to the dtype the config enables (fp32 when
            # none), so name it here; the engine's config stays fp32 (the trainable weights are fp32)
            half = HALF.get(model_cfg.dtype)
            self.keepalive = HfDeepSpeedConfig({**self.zero3, **({half: {"enabled": True}} if half else {})})
        return load_base(model_cfg, trainable=trainable, device=self.device, inspected=inspected)


def place(train: TrainConfig, distributed: DistributedConfig, batch_size: int, env: DistEnv, trains: bool) -> Placement:
    """This rank's placement; `trains`: the session will take optimizer steps (only a DeepSpeed engine
    gathers a partitioned base, so eval and predict load it whole)."""
    device = choose(train.device, env.local_rank)
    dist.init(env, distributed.engine, distributed.timeout_s, device)
    if train.threads:
        torch.set_num_threads(train.threads)
    sharded = distributed.engine == "deepspeed" and distributed.zero_stage == 3 and trains
    return Placement(device, ds_config(distributed, train, batch_size, env.world) if sharded else None)
