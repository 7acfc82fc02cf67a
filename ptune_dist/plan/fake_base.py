"""The frozen base of a run on a fake device: load_base's steps, with the weights made instead of read.

    skeleton(model_cfg, hf_config, kind) -> hf_model on meta    (outside any FakeTensorMode: bitsandbytes'
                                                                parameter classes cannot be made inside one)
    finish(model, model_cfg, device, trainable)                 (inside a FakeTensorMode) weights made on the
                                                                fake device, then load_base's last steps

What model/load.py's `load_base` does, in its order, except reading the file:
- the model class of model.kind made from the config on `meta` in model.dtype, with ptune's attention;
- quantised like `from_pretrained(quantization_config=...)`: transformers' own bitsandbytes quantizer
  (`preprocess_model`: the same BitsAndBytesConfig from model/quant.py, the same modules left in
  model.dtype) puts bitsandbytes' Linear4bit / Linear8bitLt in place; each weight is then quantised by
  bitsandbytes' own function on the fake device (`quantize_4bit`, `int8_vectorwise_quant`, what
  `Params4bit._quantize` and `Int8Params._quantize` call), from a weight of the shape and dtype the file
  would give;
- every other parameter and buffer made empty on the device (tied weights stay one tensor);
- then quant.prepare_loaded, requires_grad_, lean MLP activations, the dropout setting and gradient
  checkpointing, as load_base applies them.

One substitution: bitsandbytes' parameter classes (Params4bit, Int8Params) subclass torch.Tensor in a way
FakeTensorMode cannot wrap, so the quantised weight is the fake tensor itself, marked a parameter and
carrying the attributes bitsandbytes reads from a Params4bit / Int8Params (quant_state, blocksize,
quant_type, ...; CB and SCB). Linear4bit.forward, matmul_4bit, its autograd function and the packed
weight's bytes are bitsandbytes' own; its ops run their registered fake kernels. Double quantisation's
dynamic 8-bit code book (a 256-entry constant bitsandbytes builds with a host loop) is built on the CPU and
handed to it on the device while the weights are quantised.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from ptune_dist.model import quant
from ptune_dist.model.attention import register
from ptune_dist.model.load import CLASSES, DTYPES, settle

PARAMS4BIT_ATTRS = ("blocksize", "compress_statistics", "quant_type", "quant_storage")


def skeleton(model_cfg, hf_config, kind: str) -> nn.Module:
    """The model on `meta`, with bitsandbytes' layers in place when model.quant is set (no weights)."""
    cls = CLASSES[kind]
    hf_config = copy.deepcopy(hf_config)
    with torch.device("meta"):
        model = cls.from_config(hf_config, dtype=DTYPES[model_cfg.dtype], attn_implementation=register())
    if model_cfg.quant != "none":
        from transformers.quantizers import AutoHfQuantizer

        config = quant.bnb_config(model_cfg, quant.skip_modules(cls, hf_config))
        quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
        quantizer.preprocess_model(
            model=model,
            dtype=DTYPES[model_cfg.dtype],
            device_map={"": "cuda"},
            checkpoint_files=None,
            use_kernels=False,
        )
    return model


def _quantised_4bit(p, module, device) -> torch.Tensor:
    import bitsandbytes.functional as F

    weight = torch.empty(p.shape, dtype=p.dtype, device=device)  # what the file gives, in model.dtype
    packed, state = F.quantize_4bit(
        weight,
        blocksize=p.blocksize,
        compress_statistics=p.compress_statistics,
        quant_type=p.quant_type,
        quant_storage=p.quant_storage,
    )
    new = nn.Parameter(packed, requires_grad=False)
    for name in PARAMS4BIT_ATTRS:
        setattr(new, name, getattr(p, name))
    new.quant_state, new.bnb_quantized, new.module = state, True, module
    module.quant_state = state
    return new


def _quantised_8bit(p, device) -> torch.Tensor:
    import bitsandbytes.functional as F

    weight = torch.empty(p.shape, dtype=torch.float16, device=device)  # Int8Params._quantize casts to fp16
    cb, scb, _ = F.int8_vectorwise_quant(weight)
    new = nn.Parameter(cb, requires_grad=False)
    new.CB, new.SCB, new.has_fp16_weights = cb, scb, False
    return new


def materialise(model: nn.Module, device: torch.device, quantised: bool) -> None:
    """Every parameter and buffer made on `device` (bitsandbytes' weights quantised there); shared ones once."""
    if quantised:
        import bitsandbytes as bnb

        four, eight = bnb.nn.Params4bit, bnb.nn.Int8Params
    else:
        four = eight = ()
    made: dict[int, torch.Tensor] = {}
    with _dynamic_map(device) if quantised else contextlib.nullcontext():
        _make(model, device, made, four, eight)


@contextlib.contextmanager
def _dynamic_map(device: torch.device):
    """Double quantisation quantises the absmax with bitsandbytes' dynamic 8-bit code book, a 256-entry constant
    it builds on first use with a host loop (`.tolist()`), which a fake mode cannot run: it is built here on the
    CPU, handed to bitsandbytes on the device for the quantisation, and bitsandbytes' cache restored after."""
    import bitsandbytes.functional as F
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        code = F.create_dynamic_map()
    before = F.name2qmap.get("dynamic")
    F.name2qmap["dynamic"] = code.to(device)
    try:
        yield
    finally:
        if before is None:
            F.name2qmap.pop("dynamic", None)
        else:
            F.name2qmap["dynamic"] = before


def _make(model: nn.Module, device: torch.device, made: dict, four, eight) -> None:
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                if isinstance(p, four):
                    made[id(p)] = _quantised_4bit(p, module, device)
                elif isinstance(p, eight):
                    made[id(p)] = _quantised_8bit(p, device)
                else:
                    made[id(p)] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = made.setdefault(id(b), torch.empty_like(b, device=device))


def finish(model: nn.Module, model_cfg, device: torch.device, trainable: bool = False) -> nn.Module:
    """The skeleton as load_base leaves a base, on the (fake) `device`; call inside a FakeTensorMode."""
    materialise(model, device, quantised=model_cfg.quant != "none")
    if model_cfg.quant != "none":
        quant.prepare_loaded(model)
    return settle(model, model_cfg, trainable)
