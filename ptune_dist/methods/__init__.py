"""The method registry: config name -> class. A method is one file here and one line in REGISTERED.

Everything about a method lives on its class (base.PromptMethod's hooks: config rules, PEFT's format
both ways, the memory planner's counts); code outside this package asks the registry and the class
and never names a method.
"""

from __future__ import annotations

from .base import BaseInfo, InitContext, PromptMethod
from .full_finetune import FullFinetune
from .p_tuning import PTuning
from .p_tuning_v2 import PTuningV2
from .prefix_tuning import PrefixTuning
from .prompt_design import PromptDesign
from .prompt_tuning import PromptTuning

REGISTERED: tuple[type[PromptMethod], ...] = (
    PromptTuning,
    PTuning,
    PrefixTuning,
    PTuningV2,
    FullFinetune,
    PromptDesign,
)
METHODS: dict[str, type[PromptMethod]] = {cls.name: cls for cls in REGISTERED}
DEFAULT_METHOD = PromptTuning.name  # method.name when a config gives none


def method_class(name: str) -> type[PromptMethod]:
    from ptune_dist.errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is not one of {sorted(METHODS)}")
    return METHODS[name]


def for_peft_type(peft_type: str) -> type[PromptMethod] | None:
    """The method a PEFT adapter of `peft_type` imports as; None when no method takes it."""
    return next((cls for cls in REGISTERED if peft_type in cls.peft_imports), None)


def peft_importable() -> list[str]:
    """The PEFT peft_types that import, sorted."""
    return sorted({t for cls in REGISTERED for t in cls.peft_imports})


def peft_exportable() -> list[str]:
    """The method names that export to PEFT's format, sorted."""
    return sorted(name for name, cls in METHODS.items() if cls.peft_type is not None)


__all__ = ["METHODS", "REGISTERED", "DEFAULT_METHOD", "method_class", "for_peft_type", "peft_importable",
           "peft_exportable", "BaseInfo", "InitContext", "PromptMethod"]
