"""Export to and import from HF PEFT's adapter format (adapter_config.json + adapter_model.safetensors).

PEFT stores one tensor, `prompt_embeddings`: for prompt tuning and P-tuning the [P, H] virtual
tokens (P-tuning: the encoder's output, the encoder itself is not kept), for prefix tuning the
[P, L*2*Hkv*d] prefix (layer-major, key before value, as ptune keeps it). Same weights, same
logits in both systems. An import becomes a run folder with final/ that eval, predict and
training (as initialisation) accept. Task heads have no PEFT prompt-learning equivalent and are
not exported. Which PEFT type a method is, and how its config and weights map, is the method's
(ptune_dist/methods hooks: peft_type, peft_config, peft_weights, peft_imports, check_peft_import);
this module keeps the files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ptune_dist.config import load_config, to_yaml
from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import CheckpointError, ConfigError, PtuneError
from ptune_dist.methods import BaseInfo, InitContext, for_peft_type, method_class, peft_exportable, peft_importable
from ptune_dist.methods.config import RANDOM
from ptune_dist.model.inspect import InspectedBase, inspect_base

from . import state
from .atomic import atomic_dir
from .locate import resolve_checkpoint
from .target import cannot_write, check_target, run_of, say_replaced


class Prompts(nn.Module):
    """Just the prompt table, without the base: enough to read, convert and write prompt weights."""

    def __init__(self, cfg: RunConfig, info: BaseInfo):
        super().__init__()
        cls = method_class(cfg.method.name)
        method_cfg = dataclasses.replace(cfg.method, init=RANDOM)  # the weights are loaded next
        ctx = InitContext(embed=None, tokenizer=None, label_words=[], generator=torch.Generator())
        self.prompts = nn.ModuleDict({t.name: cls(method_cfg, info, ctx) for t in cfg.tasks})

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.named_parameters())


def base_info(cfg: RunConfig) -> BaseInfo:
    return inspect_base(cfg.model).info


def flat_prompt(module) -> torch.Tensor:
    """What PEFT saves as prompt_embeddings."""
    with torch.no_grad():
        out = module.peft_weights()
    return out.detach().float().contiguous()


def peft_config(cfg: RunConfig, base: InspectedBase, P: int):
    """The PEFT config of the run's method (its `peft_config` hook) with what every prompt config holds."""
    info = base.info
    common = dict(
        task_type="CAUSAL_LM" if info.kind == "causal_lm" else "FEATURE_EXTRACTION",
        num_virtual_tokens=P,
        num_transformer_submodules=1,
        num_layers=info.num_layers,
        base_model_name_or_path=base.path,
        inference_mode=True,
    )
    return method_class(cfg.method.name).peft_config(cfg.method, info, common)


def export_peft(checkpoint, out, task: str | None = None, force: bool = False) -> Path:
    folder = resolve_checkpoint(checkpoint)
    replaces = check_target(out, [folder, checkpoint, run_of(folder)], force)
    cfg = load_config([folder / "config.yaml"])
    if method_class(cfg.method.name).peft_type is None:
        raise ConfigError(
            f"method.name={cfg.method.name}: PEFT has no prompt format for it; exportable: {peft_exportable()}"
        )
    names = [t.name for t in cfg.tasks]
    task = task or (names[0] if len(names) == 1 else None)
    if task not in names:
        raise ConfigError(f"--task: choose one of the run's tasks {names}")
    base = inspect_base(cfg.model)
    prompts = Prompts(cfg, base.info)
    try:
        saved = load_file(folder / "trainable.safetensors")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {folder}: trainable.safetensors unreadable ({e})") from None
    mine = {k: v for k, v in saved.items() if k.startswith("prompts.")}
    try:
        prompts.load_state_dict(mine)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {folder}: prompt weights do not fit {cfg.method.name} ({e})") from None
    module = prompts.prompts[task]
    try:
        if replaces and not Path(out).is_dir():
            Path(out).unlink()  # --force over a file: atomic_dir replaces folders
        with atomic_dir(Path(out)) as tmp:
            peft_config(cfg, base, module.num_virtual_tokens).save_pretrained(str(tmp))
            save_file({"prompt_embeddings": flat_prompt(module)}, tmp / "adapter_model.safetensors")
    except OSError as e:
        raise cannot_write(out, e) from None
    say_replaced("export", replaces)
    return Path(out)


def read_adapter(d: Path) -> tuple[dict, torch.Tensor]:
    """(adapter_config.json, prompt_embeddings [P, D]) of a PEFT prompt adapter, checked."""
    try:
        meta = json.loads((d / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}: no readable adapter_config.json ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{d}/adapter_config.json: expected a JSON object, found {type(meta).__name__}")
    weights = d / "adapter_model.safetensors"
    if not weights.is_file():
        extra = (
            " (adapter_model.bin is a pickle; ptune reads safetensors only)"
            if (d / "adapter_model.bin").exists()
            else ""
        )
        raise CheckpointError(f"{d}: adapter_model.safetensors not found{extra}")
    if for_peft_type(meta.get("peft_type")) is None:
        raise CheckpointError(
            f"{d}: peft_type {meta.get('peft_type')!r} is not a prompt method ptune imports {peft_importable()}"
        )
    try:
        emb = load_file(weights)["prompt_embeddings"].float()
    except (SafetensorError, OSError, KeyError) as e:
        raise CheckpointError(f"{weights}: no readable prompt_embeddings ({type(e).__name__}: {e})") from None
    if emb.dim() != 2 or emb.shape[0] == 0:
        raise CheckpointError(
            f"{weights}: prompt_embeddings has shape {tuple(emb.shape)}; a prompt is [virtual tokens >= 1, width]"
        )
    if not bool(torch.isfinite(emb).all()):
        raise CheckpointError(f"{weights}: prompt_embeddings hold NaN or inf; nothing to import")
    return meta, emb


def import_peft(adapter_dir, out, overrides=(), force: bool = False) -> Path:
    d, out = Path(adapter_dir), Path(out)
    if out.is_file():
        raise PtuneError(f"--out {out}: a file, not a run folder (nothing was written)")
    if (out / "checkpoints").exists():
        raise PtuneError(
            f"--out {out} holds a training run's checkpoints/; an imported final/ beside them would "
            "mix two runs: import into a new folder (nothing was written)"
        )
    overrides = list(overrides)
    if any(o.split("=", 1)[0] == "output_dir" for o in overrides):
        raise ConfigError("output_dir: the run folder is --out; drop the output_dir= override")
    replaces = check_target(out / "final", [d], force)
    meta, emb = read_adapter(d)
    if not meta.get("base_model_name_or_path") and not any(o.startswith("model.name_or_path=") for o in overrides):
        raise ConfigError(
            f"{d}/adapter_config.json names no base model (base_model_name_or_path): pass "
            "model.name_or_path=... (a local folder, embedded:<name> or a hub id)"
        )
    cls = for_peft_type(meta["peft_type"])
    defaults = [
        f"method.name={cls.name}",
        f"method.num_virtual_tokens={emb.shape[0]}",
        f"output_dir={out}",
        f"model.name_or_path={meta.get('base_model_name_or_path')}",
        *cls.peft_import_overrides,
    ]
    cfg = load_config([], defaults + overrides)
    cls.check_peft_import(cfg.method, meta["peft_type"])
    if len(cfg.tasks) != 1 or any(t.scoring == "head" or t.type == "token_classification" for t in cfg.tasks):
        raise ConfigError(
            "tasks: the adapter holds one prompt and no task head; configure one task scored by the LM (tasks.0.*)"
        )
    prompts = Prompts(cfg, base_info(cfg))
    ((name, param),) = prompts.named_parameters()
    if tuple(param.shape) != tuple(emb.shape):
        raise CheckpointError(
            f"{d}/adapter_model.safetensors: prompt_embeddings {tuple(emb.shape)} do not fit "
            f"{cfg.model.name_or_path} ({tuple(param.shape)} expected for {cls.name})"
        )
    with torch.no_grad():
        param.copy_(emb)
    try:
        state.save(
            out / "final",
            to_yaml(cfg),
            state.trainable_state(prompts),
            extra={"imported_from": str(d), "peft_type": meta["peft_type"]},
        )
    except OSError as e:
        raise cannot_write(out, e) from None
    say_replaced("import", replaces)
    return out
