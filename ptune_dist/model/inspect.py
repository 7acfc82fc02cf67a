"""What a run knows of its base before any weight loads, read once (`inspect_base`) and passed down.

    inspect_base(model_cfg) -> InspectedBase   the HF config read once, the model kind resolved, the
                                               shapes a prompt must fit (methods.BaseInfo)

Session building, loading the weights (load.py) and the PEFT converters (checkpoint/peft_format.py)
all take the InspectedBase instead of reading the config again. Every problem is a ConfigError naming
model.name_or_path or model.kind, raised before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from ptune_dist import embedded
from ptune_dist.errors import ConfigError
from ptune_dist.methods import BaseInfo


@dataclass(frozen=True)
class InspectedBase:
    name: str  # model.name_or_path as configured
    path: str  # where from_pretrained reads it: a local folder or a hub id
    config: object  # the transformers PretrainedConfig
    kind: str  # causal_lm | masked_lm | encoder (model.kind resolved)
    info: BaseInfo


def inspect_base(model_cfg) -> InspectedBase:
    """model.name_or_path and model.kind resolved, the base's config read once."""
    hf_config = load_hf_config(model_cfg.name_or_path)
    kind = resolve_kind(hf_config, model_cfg.kind, model_cfg.name_or_path)
    return InspectedBase(
        model_cfg.name_or_path,
        resolve_path(model_cfg.name_or_path),
        hf_config,
        kind,
        BaseInfo.from_config(hf_config, kind),
    )


def resolve_path(name_or_path: str) -> str:
    try:
        return embedded.resolve(name_or_path)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def load_hf_config(name_or_path: str):
    path = resolve_path(name_or_path)
    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().is_dir():
        raise ConfigError(f"model.name_or_path={name_or_path!r}: no such folder")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name_or_path={name_or_path!r}: cannot read a model config there ({e})") from None


PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # torch.save files: unpickled when read


def check_weights(name_or_path: str) -> None:
    """A local model folder must hold its weights as safetensors: ptune never unpickles a file (a pickle runs
    code as it is read), so a folder with only pytorch_model.bin is refused, naming it, before the data or
    the weights load (train/session.py; load.py again). A hub id is left to the hub (from_pretrained takes
    safetensors there). The planner, which reads only config.json, does not ask."""
    path = Path(resolve_path(name_or_path)).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLES for p in path.glob(pattern))
    if pickles:  # no weights at all: from_pretrained's own error names the folder
        raise ConfigError(
            f"model.name_or_path={name_or_path!r}: {path} holds only pickle weights "
            f"({', '.join(pickles[:3])}), which ptune does not load (unpickling runs code): convert "
            "them to safetensors once, where you trust the file (transformers: from_pretrained, then "
            "save_pretrained(folder, safe_serialization=True)), and point model.name_or_path at that"
        )


def infer_kind(hf_config) -> str:
    archs = " ".join(getattr(hf_config, "architectures", None) or [])
    if "ForCausalLM" in archs or "LMHeadModel" in archs:
        return "causal_lm"
    if "ForMaskedLM" in archs or "ForPreTraining" in archs:
        return "masked_lm"
    return "causal_lm" if getattr(hf_config, "is_decoder", False) else "encoder"


def model_kinds(hf_config) -> list[str]:
    """The kinds (model.kind) this model has: those whose Auto class (CLASSES) has a model for its config
    (load.CLASSES).

    Bidirectional encoders (BERT, RoBERTa, ...) also have a causal-LM class in transformers, for use as a
    decoder: it needs decoder-trained weights (is_decoder, or a *ForCausalLM / *LMHeadModel checkpoint);
    an encoder checkpoint there would predict masked tokens as if they were the next one, so it does
    not count as causal_lm."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING, MODEL_MAPPING

    cls = type(hf_config)
    kinds = []
    decoder = cls not in MODEL_FOR_MASKED_LM_MAPPING or infer_kind(hf_config) == "causal_lm"
    if cls in MODEL_FOR_CAUSAL_LM_MAPPING and decoder:
        kinds.append("causal_lm")
    if cls in MODEL_FOR_MASKED_LM_MAPPING:
        kinds.append("masked_lm")
    if cls in MODEL_MAPPING:
        kinds.append("encoder")
    return kinds


def resolve_kind(hf_config, setting: str, name: str = "") -> str:
    """model.kind for this model: `auto` infers it; an explicit kind the model does not have is a
    ConfigError naming the kinds it has (before any weights load)."""
    if setting == "auto":
        return infer_kind(hf_config)
    kinds = model_kinds(hf_config)
    if setting not in kinds:
        model = f"{name} ({type(hf_config).__name__})" if name else type(hf_config).__name__
        has = ", ".join(kinds) if kinds else "none that ptune loads"
        raise ConfigError(
            f"model.kind={setting}: {model} has no {setting} model; the kinds it has: {has} (or model.kind=auto)"
        )
    return setting
