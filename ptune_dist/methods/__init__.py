"""The method registry: config name -> class. One file per method."""

from __future__ import annotations

from .base import BaseInfo, InitContext, PromptMethod
from .full_finetune import FullFinetune
from .p_tuning import PTuning
from .p_tuning_v2 import PTuningV2
from .prefix_tuning import PrefixTuning
from .prompt_design import PromptDesign
from .prompt_tuning import PromptTuning

METHODS: dict[str, type[PromptMethod]] = {
    "prompt_tuning": PromptTuning,
    "p_tuning": PTuning,
    "prefix_tuning": PrefixTuning,
    "p_tuning_v2": PTuningV2,
    "full_finetune": FullFinetune,
    "prompt_design": PromptDesign,
}


def method_class(name: str) -> type[PromptMethod]:
    from ptune_dist.errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is not one of {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "method_class", "BaseInfo", "InitContext", "PromptMethod"]
