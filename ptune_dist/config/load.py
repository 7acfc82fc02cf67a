"""Load a run config: YAML files merged in order onto the dataclass schema, then `key=value` overrides.

Every problem becomes a ConfigError whose message starts with the dotted key and says what is allowed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ptune_dist.errors import ConfigError
from ptune_dist.methods import METHODS
from ptune_dist.model import quant

from .schema import RunConfig


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> RunConfig:
    layers = [OmegaConf.structured(RunConfig)]
    for f in files:
        layers.append(_read_yaml(Path(f)))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
    try:
        merged = OmegaConf.merge(*layers)
        for item in overrides:
            key, value = item.split("=", 1)  # list items by index: tasks.0.template=...
            OmegaConf.update(merged, key, _parse_value(value, OmegaConf.select(merged, key, default=None)),
                             merge=True)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e)) from None
    except (TypeError, ValueError, IndexError) as e:
        raise ConfigError(f"config: cannot merge ({e})") from None
    validate(cfg)
    return cfg


def _parse_value(value: str, current):
    """An override's value for a key that now holds `current`.

    A text key takes the text as written (`#`, `{...}`, `no` and `1e3` included); other keys take
    YAML's structure ([lists], {maps}) with every scalar kept as text, which the schema then converts
    to the field's type, so `labels=[yes, no]` stays two strings and `steps=5` becomes an int.
    `null` or `~` alone is None.
    """
    if isinstance(current, str):
        return value
    if value in ("null", "~"):
        return None
    try:
        return yaml.load(value, Loader=yaml.BaseLoader) if value else value
    except yaml.YAMLError:
        return value


def _read_yaml(path: Path):
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"config file {path}: not valid YAML ({where}{getattr(e, 'problem', None) or e})") from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(f"config file {path}: expected a mapping of config keys at the top level")
    return loaded


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "config"
    msg = str(e).split("\n")[0]
    obj = getattr(e, "object_type", None)
    if "not in" in msg and obj is not None and dataclasses.is_dataclass(obj):
        allowed = ", ".join(f.name for f in dataclasses.fields(obj))
        return f"config key {key} is unknown; allowed here: {allowed}"
    return f"config key {key}: {msg}"


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> RunConfig:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(text)))
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e)) from None


def _check_choices(obj, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(choices)}")
        if dataclasses.is_dataclass(value):
            _check_choices(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_choices(item, f"{key}.{i}.")


def _positive(value, key: str, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{key}={value} must be {'>= 0' if zero_ok else '> 0'}")


def validate(cfg: RunConfig) -> None:
    """Checks that need no model or data; model-dependent checks happen where the model is built."""
    _check_choices(cfg, "")
    m, d, t = cfg.method, cfg.data, cfg.train
    cls = METHODS[m.name]
    prompt_method, deep = cls.depth != "none", cls.depth == "deep"
    if prompt_method:
        _positive(m.num_virtual_tokens, "method.num_virtual_tokens")
    if m.init == "text" and not m.init_text:
        raise ConfigError("method.init=text needs method.init_text")
    projection = m.projection if m.projection is not None else getattr(cls, "default_projection", False)
    if deep and m.init != "random" and not projection:
        raise ConfigError(f"method.init={m.init!r}: {m.name} without projection learns the prefix "
                          "keys/values directly, which only init=random fills; set method.projection=true")
    if m.name == "p_tuning" and m.encoder_hidden_size < 0:
        raise ConfigError("method.encoder_hidden_size must be >= 0")
    _positive(d.max_length, "data.max_length")
    _positive(d.batch_size, "data.batch_size")
    _positive(d.eval_batch_size, "data.eval_batch_size")
    _positive(t.steps, "train.steps", zero_ok=True)
    _positive(t.grad_accum, "train.grad_accum")
    _positive(t.lr, "train.lr")
    _positive(t.log_every, "train.log_every")
    _positive(t.warmup_steps, "train.warmup_steps", zero_ok=True)
    _positive(t.keep_checkpoints, "train.keep_checkpoints")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas={t.betas}: expected two numbers")
    if cfg.model.dropout is not None and not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout={cfg.model.dropout} must be in [0, 1)")
    _check_distributed(cfg)
    quant.validate(cfg.model, cls.trains_base, m.name, cfg.distributed)
    if not cfg.tasks:
        raise ConfigError("tasks: at least one task is needed")
    names = [task.name for task in cfg.tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks: names must be unique, got {names}")
    types = {task.type for task in cfg.tasks}
    if len(types) > 1:
        raise ConfigError(f"tasks: one batch mixes tasks of one type only, got types {sorted(types)}")
    for i, task in enumerate(cfg.tasks):
        key = f"tasks.{i}"
        if "{soft}" in task.template and not (prompt_method and not deep):
            raise ConfigError(f"{key}.template places {{soft}}, but method.name={m.name} has no virtual "
                              "input tokens (deep prompts sit in every layer); remove {soft}")
        if task.type == "token_classification" and task.scoring != "head":
            raise ConfigError(f"{key}.scoring={task.scoring!r}: token_classification needs scoring=head")
        if task.type == "generation" and task.scoring == "head":
            raise ConfigError(f"{key}.scoring=head: generation tasks are scored by the LM head")
        if m.init == "labels" and task.type != "classification":
            raise ConfigError(f"method.init=labels needs class labels; {key}.type is {task.type}")


def _check_distributed(cfg: RunConfig) -> None:
    d = cfg.distributed
    if d.engine != "deepspeed":
        if d.zero_stage or d.offload_optimizer or d.offload_params or d.zero_extra:
            raise ConfigError("distributed.zero_stage / offload_* / zero_extra need distributed.engine=deepspeed")
        return
    owned = {"stage": "zero_stage", "offload_optimizer": "offload_optimizer", "offload_param": "offload_params"}
    for key in d.zero_extra:
        if key in owned:
            raise ConfigError(f"distributed.zero_extra.{key}: set distributed.{owned[key]} instead "
                              "(ptune validates it and builds the DeepSpeed section)")
    if d.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"distributed.zero_stage={d.zero_stage} is not one of 0, 1, 2, 3")
    if d.offload_optimizer and d.zero_stage < 2:
        raise ConfigError("distributed.offload_optimizer needs distributed.zero_stage 2 or 3")
    if d.offload_params and d.zero_stage != 3:
        raise ConfigError("distributed.offload_params needs distributed.zero_stage=3")
    if cfg.train.optimizer != "adamw":
        raise ConfigError(f"train.optimizer={cfg.train.optimizer}: with distributed.engine=deepspeed use adamw "
                          "(ZeRO flattens the parameters, which undoes Adafactor's factored statistics)")
    _positive(d.timeout_s, "distributed.timeout_s")
