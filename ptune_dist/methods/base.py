"""What every method is: a module that produces one task's prompt, what it needs to know of the base, and
the hooks through which the rest of ptune asks about the method instead of testing its name.

The hooks (class attributes and classmethods of PromptMethod, overridden where a method differs):

- config: `check_config(m)`, the method section's own rules (config/validate.py calls it);
- PEFT's adapter format (checkpoint/peft_format.py keeps the files): `peft_type`, `peft_config(...)` and
  `peft_weights()` to export; `peft_imports`, `peft_import_overrides` and `check_peft_import(...)` to import;
- how the prompt enters the model: `placement` (placement.py: shallow, deep, none, or a new one);
- the memory planner (plan/memory.py, plan/search.py): `placement`, `trains_base`, `trainable_params(...)`
  and `activation_bytes(...)`.

`m` is a run config's method section: an instance of the class's `Config` (methods/config.py's MethodConfig,
or a subclass a method declares beside it for its own knobs); the planner holds the same object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ptune_dist.errors import ConfigError

from .config import TEXT, MethodConfig
from .placement import NONE, Placement


@dataclass(frozen=True)
class BaseInfo:
    """The shapes of the frozen base that a prompt must fit."""

    kind: str  # causal_lm | masked_lm | encoder
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int

    @classmethod
    def from_config(cls, config, kind: str) -> BaseInfo:
        heads = config.num_attention_heads
        return cls(
            kind=kind,
            model_type=config.model_type,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size,
            max_positions=getattr(config, "max_position_embeddings", 0) or 0,
        )

    @property
    def kv_width(self) -> int:
        """Numbers per virtual token for all layers' keys and values (PEFT's flattened prefix width)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim


@dataclass
class InitContext:
    """What initialisations may read of the base: token embeddings by id, the tokenizer, label words."""

    embed: Callable[[torch.Tensor], torch.Tensor]  # LongTensor [n] -> [n, H]
    tokenizer: object
    label_words: list[str]
    generator: torch.Generator


class PromptMethod(nn.Module):
    """One task's prompt.

    placement SHALLOW: forward() -> [P, H] virtual token embeddings placed in the input;
    placement DEEP: forward() -> [L, 2, Hkv, P, d] keys/values seen by every attention layer;
    placement NONE: no prompt (baselines); another Placement says what forward() returns.
    """

    name: ClassVar[str] = ""  # method.name in a run config (the registry's key)
    Config: ClassVar[type[MethodConfig]] = MethodConfig  # its method section: a subclass adds the method's knobs
    placement: ClassVar[Placement] = NONE  # how the prompt enters the model
    trains_base: ClassVar[bool] = False  # every weight of the base trains along
    peft_type: ClassVar[str | None] = None  # the PEFT peft_type it exports as; None: PEFT has no format for it
    peft_imports: ClassVar[tuple[str, ...]] = ()  # PEFT peft_types whose adapters import as this method
    peft_import_overrides: ClassVar[tuple[str, ...]] = ()  # config lines such an import sets besides the name

    def __init__(self, num_virtual_tokens: int = 0):
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens

    def forward(self) -> torch.Tensor | None:
        return None

    @classmethod
    def trains_nothing(cls) -> bool:
        """A baseline scored as it is (prompt design): no prompt and no base weight trains."""
        return not cls.placement.learned and not cls.trains_base

    @classmethod
    def table_rank(cls) -> tuple[int, int]:
        """Where the method sits in a study's tables: by what trains, from nothing through a shallow then a deep
        prompt to the whole base (the order of Lester et al.'s Figure 1)."""
        return int(cls.trains_base), cls.placement.rank

    # -- config ---------------------------------------------------------------------------------
    @classmethod
    def section(cls, base: MethodConfig | None = None, **changes: Any) -> MethodConfig:
        """This method's Config: the fields `base` (another method's section, say) shares with it, then
        `changes`; the rest at their defaults. `name` is this method's."""
        own = {f.name for f in dataclasses.fields(cls.Config)}
        kept = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name in own} if base else {}
        return cls.Config(**{**kept, **changes, "name": cls.name})

    @classmethod
    def check_config(cls, m: MethodConfig) -> None:
        """The method section's combinations that cannot work (each field's domain is checked before)."""
        if cls.placement.prompt_tokens(1) and m.num_virtual_tokens <= 0:
            raise ConfigError(f"method.num_virtual_tokens={m.num_virtual_tokens} must be > 0")
        if m.init == TEXT and not m.init_text:
            raise ConfigError("method.init=text needs method.init_text")

    # -- PEFT's adapter format --------------------------------------------------------------------
    @classmethod
    def peft_config(cls, m: MethodConfig, info: BaseInfo, common: dict[str, Any]) -> Any:
        """The PEFT config an export writes; `common`: the keyword arguments every prompt config takes."""
        raise ConfigError(f"method.name={m.name}: PEFT has no prompt format for it")

    def peft_weights(self) -> torch.Tensor:
        """What PEFT saves as `prompt_embeddings` (call under no_grad)."""
        return self()

    @classmethod
    def check_peft_import(cls, m: MethodConfig, peft_type: str) -> None:
        """Refuses a method section (the import's lines plus the user's overrides) that cannot hold the
        adapter's weights."""
        if m.name != cls.name or not cls.holds_peft_import(m):
            sets = "".join(f" with {line}" for line in cls.peft_import_overrides)
            raise ConfigError(
                f"method.name={m.name}: the adapter is PEFT's {peft_type}, which imports as "
                f"method.name={cls.name}{sets}; drop the method.* override"
            )

    @classmethod
    def holds_peft_import(cls, m: MethodConfig) -> bool:
        """Whether the section, besides its name, keeps what `peft_import_overrides` set."""
        return True

    # -- the memory planner -----------------------------------------------------------------------
    @classmethod
    def trainable_params(cls, m: MethodConfig, hidden_size: int, kv_width: int, base_params: int) -> int:
        """Parameters one task's module has (what __init__ builds); `kv_width` as BaseInfo.kv_width,
        `base_params` the whole base's."""
        return 0

    @classmethod
    def activation_bytes(cls, m: MethodConfig, hidden_size: int, kv_width: int) -> float:
        """Bytes autograd keeps of the prompt's own forward (its encoder or projection) for one step."""
        return 0.0
