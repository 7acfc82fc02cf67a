"""Load the frozen base model and its tokenizer, switched to the prefix-attention implementation."""

from __future__ import annotations

import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from ptune_dist.runtime import release_free_memory

from . import quant
from .attention import register
from .inspect import InspectedBase, check_weights, inspect_base, resolve_path
from .lean import apply_lean_mlp

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CLASSES = {"causal_lm": AutoModelForCausalLM, "masked_lm": AutoModelForMaskedLM, "encoder": AutoModel}


def load_tokenizer(name_or_path: str, padding_side: str = "right"):
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_base(
    model_cfg, trainable: bool = False, device: torch.device | None = None, inspected: InspectedBase | None = None
):
    """(model, info): the HF model on `device` (default: the CPU), every parameter frozen unless `trainable`.

    `inspected`: the run's inspect_base(model_cfg) (read here when not given). The weights go from the
    file straight to the device (no full CPU copy first); under ZeRO-3 (a live HfDeepSpeedConfig, see
    train/placement.py) DeepSpeed places each rank's partition on the current device instead."""
    base = inspected or inspect_base(model_cfg)
    check_weights(model_cfg.name_or_path)  # safetensors only: a pickle is refused, never read
    hf_config = base.config
    # a sliding-window model (Gemma 3, Mistral) runs while every query sees all its keys: the attention
    # function refuses a longer one (model/attention.py), naming data.max_length
    transformers.utils.logging.disable_progress_bar()
    extra = {}
    if model_cfg.quant != "none":  # config validation refuses a quantised base for a method that trains it
        extra["quantization_config"] = quant.bnb_config(model_cfg, quant.skip_modules(CLASSES[base.kind], hf_config))
    placement = device_map(device)
    if placement:
        extra["device_map"] = placement
    model = CLASSES[base.kind].from_pretrained(
        base.path, dtype=DTYPES[model_cfg.dtype], attn_implementation=register(), **extra
    )
    if model_cfg.quant != "none":
        quant.prepare_loaded(model)
    release_free_memory()
    return settle(model, model_cfg, trainable), base.info


def settle(model, model_cfg, trainable: bool):
    """What a loaded base gets before it trains: every parameter frozen unless `trainable`, lean MLP activations,
    the dropout setting, gradient checkpointing (plan/fake_base.py's fake base goes through it too)."""
    model.requires_grad_(trainable)
    if model_cfg.lean_activations:
        apply_lean_mlp(model)
    if model_cfg.dropout is not None:
        set_dropout(model, model_cfg.dropout)
    if model_cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return model


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
