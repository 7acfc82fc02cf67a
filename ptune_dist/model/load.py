"""Load the frozen base model and its tokenizer, switched to the prefix-attention implementation."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from ptune_dist import embedded
from ptune_dist.errors import ConfigError
from ptune_dist.methods import BaseInfo
from ptune_dist.runtime import release_free_memory

from . import quant
from .attention import register
from .lean import apply_lean_mlp

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CLASSES = {"causal_lm": AutoModelForCausalLM, "masked_lm": AutoModelForMaskedLM, "encoder": AutoModel}


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


def infer_kind(hf_config) -> str:
    archs = " ".join(getattr(hf_config, "architectures", None) or [])
    if "ForCausalLM" in archs or "LMHeadModel" in archs:
        return "causal_lm"
    if "ForMaskedLM" in archs or "ForPreTraining" in archs:
        return "masked_lm"
    return "causal_lm" if getattr(hf_config, "is_decoder", False) else "encoder"


def model_kinds(hf_config) -> list[str]:
    """The kinds (model.kind) this model has: those whose Auto class (CLASSES) has a model for its config.

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
        raise ConfigError(f"model.kind={setting}: {model} has no {setting} model; the kinds it has: {has} "
                          "(or model.kind=auto)")
    return setting


def load_tokenizer(name_or_path: str, padding_side: str = "right"):
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_base(model_cfg, trainable: bool = False, device: torch.device | None = None):
    """(model, info): the HF model on `device` (default: the CPU), every parameter frozen unless `trainable`.

    The weights go from the file straight to the device (no full CPU copy first); under ZeRO-3
    (a live HfDeepSpeedConfig) DeepSpeed places each rank's partition on the current device instead."""
    hf_config = load_hf_config(model_cfg.name_or_path)
    if getattr(hf_config, "sliding_window", None) and getattr(hf_config, "use_sliding_window", True):
        raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r} uses sliding-window attention; "
                          "ptune's prefix attention supports full attention only")
    kind = resolve_kind(hf_config, model_cfg.kind, model_cfg.name_or_path)
    transformers.utils.logging.disable_progress_bar()
    extra = {}
    if model_cfg.quant != "none":  # config validation refuses a quantised base for a method that trains it
        extra["quantization_config"] = quant.bnb_config(model_cfg, quant.skip_modules(CLASSES[kind], hf_config))
    placement = device_map(device)
    if placement:
        extra["device_map"] = placement
    model = CLASSES[kind].from_pretrained(
        resolve_path(model_cfg.name_or_path), dtype=DTYPES[model_cfg.dtype], attn_implementation=register(),
        **extra)
    if model_cfg.quant != "none":
        quant.prepare_loaded(model)
    release_free_memory()
    model.requires_grad_(trainable)
    if model_cfg.lean_activations:
        apply_lean_mlp(model)
    if model_cfg.dropout is not None:
        set_dropout(model, model_cfg.dropout)
    if model_cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return model, BaseInfo.from_config(model.config, kind)


def enable_checkpointing(model) -> None:
    """Recompute each layer in the backward (non-reentrant, so prefixes and quantised layers work).
    transformers 5.23 names it activation_checkpointing_enable; before (5.17, on the GPU machine this was
    written for) only gradient_checkpointing_enable, now its deprecated alias."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def device_map(device: torch.device | None) -> dict | None:
    """from_pretrained's placement: everything on the rank's GPU; None on the CPU (transformers' default)
    and under ZeRO-3, where DeepSpeed places the partitions and transformers refuses a device_map."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if device is None or device.type == "cpu" or is_deepspeed_zero3_enabled():
        return None
    return {"": device}


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for name in ("attention_dropout", "dropout"):  # attention modules read a float attribute
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, p)
