"""The method registry: config name -> class. A method is one file here and one line in REGISTERED.

Everything about a method lives on its class (base.PromptMethod's hooks: its `Config` (the method
section's fields, config.py), its `placement` (how its prompt enters the model, placement.py), config
rules, PEFT's format both ways, the memory planner's counts); code outside this package asks the registry
and the class and never names a method. `register(cls)` adds a class at run time (a plug-in, a test) and
returns a context manager that takes it out again.
"""

from __future__ import annotations

import contextlib
import dataclasses

from .base import BaseInfo, InitContext, PromptMethod
from .config import INITS, MethodConfig
from .full_finetune import FullFinetune
from .p_tuning import PTuning
from .p_tuning_v2 import PTuningV2
from .placement import DEEP, NONE, SHALLOW, Placement
from .prefix_tuning import PrefixTuning
from .prompt_design import PromptDesign
from .prompt_tuning import PromptTuning

REGISTERED: list[type[PromptMethod]] = [
    PromptTuning,
    PTuning,
    PrefixTuning,
    PTuningV2,
    FullFinetune,
    PromptDesign,
]
METHODS: dict[str, type[PromptMethod]] = {cls.name: cls for cls in REGISTERED}
DEFAULT_METHOD = PromptTuning.name  # method.name when a config gives none (MethodConfig's default)
assert MethodConfig.name == DEFAULT_METHOD


def method_class(name: str) -> type[PromptMethod]:
    from ptune_dist.errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is not allowed; choose one of {list(METHODS)}")
    return METHODS[name]


def register(cls: type[PromptMethod]) -> contextlib.AbstractContextManager:
    """Adds `cls` to the registry now (its name must be new, its Config a MethodConfig whose fields agree with
    every registered method's fields of the same name); the returned context manager, on exit, removes it."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or registered already")
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass extending methods.config.MethodConfig")
    for f in dataclasses.fields(cls.Config):
        for other in REGISTERED:
            same = {g.name: g for g in dataclasses.fields(other.Config)}.get(f.name)
            if same is not None and (same.type, same.default) != (f.type, f.default):
                raise ValueError(
                    f"{cls.__name__}.Config.{f.name} differs from {other.__name__}.Config's field "
                    "of the same name: a method section's key means one thing"
                )
    REGISTERED.append(cls)
    METHODS[cls.name] = cls

    @contextlib.contextmanager
    def undo():
        try:
            yield cls
        finally:
            REGISTERED.remove(cls)
            METHODS.pop(cls.name, None)

    return undo()


def owners(key: str) -> list[str]:
    """The names of the registered methods whose Config has the field `key`."""
    return [name for name, cls in METHODS.items() if key in {f.name for f in dataclasses.fields(cls.Config)}]


def for_peft_type(peft_type: str) -> type[PromptMethod] | None:
    """The method a PEFT adapter of `peft_type` imports as; None when no method takes it."""
    return next((cls for cls in REGISTERED if peft_type in cls.peft_imports), None)


def peft_importable() -> list[str]:
    """The PEFT peft_types that import, sorted."""
    return sorted({t for cls in REGISTERED for t in cls.peft_imports})


def peft_exportable() -> list[str]:
    """The method names that export to PEFT's format, sorted."""
    return sorted(name for name, cls in METHODS.items() if cls.peft_type is not None)


__all__ = [
    "METHODS",
    "REGISTERED",
    "DEFAULT_METHOD",
    "INITS",
    "method_class",
    "register",
    "owners",
    "for_peft_type",
    "peft_importable",
    "peft_exportable",
    "BaseInfo",
    "InitContext",
    "MethodConfig",
    "PromptMethod",
    "Placement",
    "NONE",
    "SHALLOW",
    "DEEP",
]
