"""What the model.quant* keys may hold, checked with the rest of the config before anything loads
(model/quant.py builds the quantised base itself; see docs/quant.md).

    validate(model_cfg, trains_base, method_name, distributed, device)
                                                                 the 4-bit keys only with a 4-bit base, no
                                                                 quantised base for a method that trains it,
                                                                 no int8 under ZeRO-3, float16 only where
                                                                 train.device (`device`) runs on a GPU
                                                                 (ptune_dist/device.py on_gpu), bitsandbytes
                                                                 installed and recent
    require_bitsandbytes(key)                                    its version, or a ConfigError saying how to
                                                                 install it
    compute_dtype(model_cfg)                                     the dtype a 4-bit matmul runs in: model.dtype
                                                                 unless model.quant_compute_dtype names another
"""

from __future__ import annotations

from importlib import metadata

from ptune_dist import device as devices
from ptune_dist.errors import ConfigError

MIN_BNB = (0, 45)


def require_bitsandbytes(key: str = "model.quant") -> str:
    """The installed bitsandbytes version, or a ConfigError that says how to install it."""
    try:
        version = metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"{key}: quantised bases need bitsandbytes, which is not installed; "
            "run `pip install bitsandbytes` (>= 0.45)"
        ) from None
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_BNB:
        raise ConfigError(
            f"{key}: bitsandbytes {version} is too old (CPU support needs >= 0.45); run `pip install -U bitsandbytes`"
        )
    return version


def compute_dtype(model_cfg) -> str:
    """model.quant_compute_dtype, with `auto` read as model.dtype: the base's own dtype (bf16 on a GPU) unless the
    user asks for another (fp32 on a quantised base then only when asked for)."""
    return model_cfg.dtype if model_cfg.quant_compute_dtype == "auto" else model_cfg.quant_compute_dtype


def validate(model_cfg, trains_base: bool, method_name: str, distributed=None, device: str = "auto") -> None:
    """Config-only checks of the model.quant* keys (called by config validation); `device`: train.device."""
    q = model_cfg.quant
    four_bit = q in ("nf4", "fp4")
    if not four_bit:  # the 4-bit settings must keep their defaults
        for key, default in (("quant_double", False), ("quant_compute_dtype", "auto"), ("quant_storage", "uint8")):
            value = getattr(model_cfg, key)
            if value != default:
                why = (
                    "has no effect without model.quant"
                    if q == "none"
                    else f"applies to 4-bit bases only and model.quant={q} ignores it"
                )
                raise ConfigError(f"model.{key}={value!r} {why} (nf4 or fp4); set model.quant or remove the key")
    if q == "none":
        return
    if trains_base:
        raise ConfigError(
            f"model.quant={q}: method.name={method_name} trains the base weights, which a "
            "quantised base cannot (bitsandbytes layers have no weight gradient); use "
            "model.quant=none or a prompt method"
        )
    if q == "int8" and distributed is not None and distributed.engine == "deepspeed" and distributed.zero_stage == 3:
        raise ConfigError(
            "model.quant=int8 with distributed.zero_stage=3: bitsandbytes' Linear8bitLt keeps a second "
            "reference to its whole int8 weight (weight.CB, then state.CB), so ZeRO-3 cannot free the "
            "parts other ranks own and every rank would hold the whole base; use model.quant=nf4 with "
            "model.quant_storage=bfloat16, or distributed.zero_stage 0-2 (docs/quant.md)"
        )
    if model_cfg.dtype == "float16" or (four_bit and compute_dtype(model_cfg) == "float16"):
        key = "model.dtype" if model_cfg.dtype == "float16" else "model.quant_compute_dtype"
        if not devices.on_gpu(device):
            raise ConfigError(
                f"{key}=float16 with model.quant={q} and train.device={device}: bitsandbytes' CPU "
                "kernels take float32 or bfloat16; use one of those (docs/quant.md)"
            )
    require_bitsandbytes()
