"""The offload rule, in one place: DeepSpeed offloads the optimizer state from ZeRO stage 2 and the parameters
at stage 3 only. Asked by config validation (validate.py) and by the planner (plan/memory.py check).

    check_offload(d)   d: anything with engine, zero_stage, offload_optimizer, offload_params (the distributed
                       section, or the planner's Setup); a ConfigError naming the key when the rule is broken
"""

from __future__ import annotations

from ptune_dist.errors import ConfigError


def check_offload(d) -> None:
    zero = d.zero_stage if d.engine == "deepspeed" else 0
    if d.offload_optimizer and zero < 2:
        raise ConfigError(
            "distributed.offload_optimizer needs distributed.engine=deepspeed and distributed.zero_stage 2 or 3"
        )
    if d.offload_params and zero != 3:
        raise ConfigError("distributed.offload_params needs distributed.engine=deepspeed and distributed.zero_stage=3")
