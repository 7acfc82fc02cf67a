"""A frozen base quantised by bitsandbytes (int8, nf4, fp4), through transformers' BitsAndBytesConfig.

Only the linear layers of the transformer blocks are quantised. The input embeddings, the output
head and anything tied to them stay in `model.dtype` (the prompt inits read the embedding matrix,
and the head's logits feed the loss); the soft prompt and its encoder are not part of the base and
stay fp32 master weights. Prompt tuning needs only the gradient to the *inputs* of the quantised
layers, which bitsandbytes computes on CPU and GPU alike. See docs/quant.md.

Three things this module does besides building the config:
- `guard_cpu_repack`: on CPUs with avx512_bf16, bitsandbytes' Linear4bit repacks its weights for a
  fused inference kernel the first time it runs in eval mode on an input that does not require
  grad; from then on it calls a kernel without autograd and returns no input gradient (only a
  UserWarning says so), so the soft prompt's gradient would be silently wrong after the first
  evaluation. The guard turns that path off on every Linear4bit and checks after each forward.
- `install_log_filter`: drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from
  kernels-community" line (it then falls back to its own kernel, correctly); nothing else.
- `weight_bytes` / `dequantized_copy`: what the weights occupy, and an fp32 twin of a quantised
  model (the reference the tests compare gradients against).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ptune_dist.config.quant_rules import compute_dtype, require_bitsandbytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGE = {"uint8": torch.uint8, **DTYPES}
# heads that a classifier or encoder may carry, kept unquantised like the LM head (suffix matches)
HEAD_MODULES = ["lm_head", "score", "classifier", "pooler", "qa_outputs", "cls"]

NOISE = "Failed to load CPU gemm_4bit_forward from kernels-community"
NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


class _DropKernelHubNoise(logging.Filter):
    """bitsandbytes tries to fetch an optional CPU kernel from the Hugging Face kernel hub when it is
    imported on an avx512_bf16 CPU and logs a warning when it cannot; it falls back to its bundled
    kernel, so the line tells the user nothing. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def install_log_filter() -> None:
    """Attach the filter to the logger that emits the line. Works whether or not bitsandbytes is
    imported yet (loggers are created by name); idempotent."""
    for name in NOISY_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropKernelHubNoise) for f in log.filters):
            log.addFilter(_DropKernelHubNoise())


install_log_filter()  # before anything imports bitsandbytes: the line is logged at its import


def bnb_config(model_cfg, skip_modules: list[str]):
    """transformers.BitsAndBytesConfig for `model_cfg` (quant != none)."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if model_cfg.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_cfg.quant,
        bnb_4bit_use_double_quant=model_cfg.quant_double,
        bnb_4bit_compute_dtype=DTYPES[compute_dtype(model_cfg)],
        bnb_4bit_quant_storage=STORAGE[model_cfg.quant_storage],
        llm_int8_skip_modules=skip_modules,  # the 4-bit path reads the same key
    )


def skip_modules(model_class, hf_config) -> list[str]:
    """Modules to leave unquantised: the output head, everything tied to the embeddings and the last
    module (transformers' own defaults, computed on a weightless copy of the model, because passing
    our list replaces them) plus the usual head names."""
    import contextlib

    from transformers import modeling_utils
    from transformers.quantizers.base import get_keys_to_not_convert

    # set_quantized_state: what from_pretrained itself uses so that ZeRO-3 (HfDeepSpeedConfig alive)
    # does not build this skeleton through deepspeed.zero.Init
    quantised_state = getattr(modeling_utils, "set_quantized_state", contextlib.nullcontext)
    with torch.device("meta"), quantised_state():
        skeleton = model_class.from_config(hf_config)
    return sorted(set(get_keys_to_not_convert(skeleton)) | set(HEAD_MODULES))


def layer_types() -> tuple[type, ...]:
    """bitsandbytes' quantised linear layers (imported on first use: importing bitsandbytes is slow)."""
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit, bnb.nn.Linear8bitLt


def quantised_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, layer_types())}


def check_unquantised_ends(model: nn.Module) -> None:
    """The embeddings and the output head must be plain modules: the prompt inits read the embedding
    matrix and the soft prompt's gradient runs through the head."""
    bnb_types = layer_types()
    for what, module in (
        ("input embeddings", model.get_input_embeddings()),
        ("output head", getattr(model, "get_output_embeddings", lambda: None)()),
    ):
        if module is not None and isinstance(module, bnb_types):
            raise RuntimeError(
                f"the {what} of the base were quantised ({type(module).__name__}); "
                "ptune keeps them in model.dtype (a bug: report it with the model name)"
            )


def _check_not_packed(module, args, output):
    if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
        raise RuntimeError(
            "a bitsandbytes Linear4bit repacked its weights for CPU inference; it no longer returns input "
            "gradients, so the soft prompt's gradient would be wrong. ptune.model.quant.guard_cpu_repack "
            "should have prevented this; this bitsandbytes version repacks by another route (docs/quant.md)"
        )


def guard_cpu_repack(model: nn.Module) -> int:
    """Keep every Linear4bit on the autograd path: no repacking for the avx512_bf16 inference kernel.
    Returns the number of layers guarded. Each layer also checks after every forward that its weights
    are still in the trainable layout, so a bitsandbytes change cannot make the gradient silently wrong."""
    import bitsandbytes as bnb

    n = 0
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes' inverse repack restores a non-nested layer's scales in the wrong layout
            # (and rounded to bfloat16): no way back to the loaded weights, so refuse
            raise RuntimeError(
                f"{name}: this Linear4bit was already repacked for CPU inference (it ran in "
                "eval mode before ptune guarded it); load the base again with ptune's load_base"
            )
        module.support_avx512bf16_for_cpu = False
        if _check_not_packed not in module._forward_hooks.values():
            module.register_forward_hook(_check_not_packed)
        n += 1
    return n


def _int8_dequant_path(module, args):
    if args and torch.is_tensor(args[0]) and args[0].device.type == "cpu":
        module.training = True  # Linear8bitLt reads it as "use the dequantised-weight matmul"


def int8_cpu_dequant_path(model: nn.Module) -> int:
    """On CPU, run every Linear8bitLt through bitsandbytes' dequantised-weight matmul (its training
    path) in eval mode too. Its eval path casts the activations to float16 and quantises them to int8
    as well (LLM.int8()); measured on SmolLM2-135M here, that changed the logits by up to 45% of their
    largest magnitude against the dequantised model, was 4x slower than the training path on this CPU
    and logged a warning per layer per call. With this, evaluation scores the same function that
    training optimised. GPUs keep bitsandbytes' int8 kernels in both modes (bitsandbytes' choice)."""
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt) and not getattr(module, "_ptune_dequant_path", False):
            module.register_forward_pre_hook(_int8_dequant_path)
            module._ptune_dequant_path = True
            n += 1
    return n


def own_unquantised(model: nn.Module) -> None:
    """Copy the unquantised parameters (embeddings, norms, head) out of the memory-mapped weights file.
    A tensor loaded in the file's own dtype is a view into the mapping, which keeps the whole file
    mapped; the pages read while quantising the other layers then stay resident (measured on
    SmolLM2-135M with an fp32 rest: 524 MiB of file pages next to 66 MiB of 4-bit weights)."""
    bnb_types = layer_types()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, bnb_types):
                continue
            for p in module.parameters(recurse=False):
                if p.device.type == "cpu":  # on a GPU the weights were copied out of the file already
                    p.data = p.data.clone()


def prepare_loaded(model: nn.Module) -> int:
    """After from_pretrained: check the ends, guard the 4-bit layers, keep int8 on its exact path on
    CPU, let go of the weights file. Returns the number of quantised layers."""
    check_unquantised_ends(model)
    own_unquantised(model)
    guard_cpu_repack(model)
    int8_cpu_dequant_path(model)
    return len(quantised_layers(model))


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters and buffers: `total`, and `quantised` (bitsandbytes layers,
    their scales included) vs `other` (embeddings, norms, head). Shared tensors count once."""
    import bitsandbytes as bnb

    seen: set[int] = set()
    out = {"quantised": 0, "other": 0}
    bnb_types = layer_types()

    def count(t) -> int:
        if t is None or id(t) in seen or t.device.type == "meta":
            return 0
        seen.add(id(t))
        return t.numel() * t.element_size()

    for module in model.modules():
        quantised = isinstance(module, bnb_types)
        size = 0
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            size += count(t)
        if isinstance(module, bnb.nn.Linear4bit) and module.weight.quant_state is not None:
            size += sum(count(v) for v in state_tensors(module.weight.quant_state))
        if isinstance(module, bnb.nn.Linear8bitLt):
            size += count(getattr(module.weight, "SCB", None))
        out["quantised" if quantised else "other"] += size
    out["total"] = out["quantised"] + out["other"]
    return out


def state_tensors(state):
    """The tensors of a bitsandbytes 4-bit QuantState (absmax, code, offset, the nested state's): held beside the
    packed weight, on its device."""
    yield state.absmax
    yield state.code
    if getattr(state, "offset", None) is not None and torch.is_tensor(state.offset):
        yield state.offset
    if getattr(state, "state2", None) is not None:
        yield from state_tensors(state.state2)


def dequantize_weight(module: nn.Module) -> torch.Tensor:
    """The fp32 weight [out, in] a bitsandbytes linear layer computes with."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    if isinstance(module, bnb.nn.Linear4bit):
        return F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    if isinstance(module, bnb.nn.Linear8bitLt):
        scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
        cb = module.weight.data if module.weight.data.dtype == torch.int8 else module.state.CB
        return F.int8_vectorwise_dequant(cb, scb).float()
    raise TypeError(f"{type(module).__name__} is not a bitsandbytes linear layer")


def dequantized_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in which every bitsandbytes linear layer is a plain fp32 nn.Linear with
    the dequantised weight: the same function, computed without bitsandbytes."""
    twin = copy.deepcopy(model)
    for name, module in quantised_layers(twin).items():
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        plain.weight = nn.Parameter(dequantize_weight(module), requires_grad=False)
        if module.bias is not None:
            plain.bias = nn.Parameter(module.bias.detach().float().clone(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, plain)
    return nn.Module.float(twin)  # transformers refuses .float() on a model it quantised
