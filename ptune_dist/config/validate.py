"""What a run config may hold, checked before any model or data loads; every error names the dotted key.

Each field is checked against its declaration (schema.py: `choice`, `number`, `numbers`) and its type
hint (text fields hold text only, down to every list item) by one walk of the dataclass tree; then the
values and combinations that cannot work (empty label words, a
train.resume that is neither auto, never nor a folder); the method section's own rules are its class's
(`check_config`, ptune_dist/methods). Model-dependent checks happen where the model is built.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import typing
from pathlib import Path

from ptune_dist.errors import ConfigError
from ptune_dist.methods import method_class
from ptune_dist.methods.config import NEEDS_CLASS_LABELS

from . import quant_rules
from .offload import check_offload
from .schema import RunConfig

TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")  # names become metric keys and file names


def _check_fields(obj, prefix: str) -> None:
    """Every field against what its declaration allows (choices, numeric domain, text), the whole tree down."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        _check_text(value, hints[f.name], key)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(choices)}")
        domain = f.metadata.get("domain")
        if domain is not None and value is not None:
            for item in value if isinstance(value, list) else [value]:
                problem = domain.problem(item)
                if problem:
                    raise ConfigError(
                        f"{key}={value}: every value {problem}"
                        if isinstance(value, list)
                        else f"{key}={value} {problem}"
                    )
        elif isinstance(value, float) and not math.isfinite(value):  # a float without a declared domain too
            raise ConfigError(f"{key}={value} must be a finite number")
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_fields(item, f"{key}.{i}.")


def _check_text(value, tp, key: str) -> None:
    """A str / List[str] / Dict[str, List[str]] field holds text at every leaf (a YAML `[a: b]` item is a
    mapping, not the line `a: b`); other leaf types are OmegaConf's to convert."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str and not isinstance(value, str):
        kind = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "not text"
        raise ConfigError(f"{key} must be text, found {kind}: {value!r} (quote it to keep it as written)")
    if origin is list and args[0] is str:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of text, found {value!r}")
        for i, item in enumerate(value):
            _check_text(item, str, f"{key}.{i}")
    elif origin is dict and args[1] is not typing.Any:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, found {value!r}")
        for k, item in value.items():
            _check_text(item, args[1], f"{key}.{k}")


HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def rdzv_address(endpoint: str, key: str = "launch.rdzv_endpoint") -> tuple[str, int]:
    """(host, port) of `host:port`, host a hostname, an IPv4 address or an [IPv6 address] (returned
    without its brackets); anything else is a ConfigError."""
    host, sep, port = endpoint.rpartition(":")
    ok = bool(sep) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        address, percent, zone = host.partition("%")  # a zone (fe80::1%eth0): a plain interface name
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            ok = False
        ok = ok and (not percent or bool(re.fullmatch(r"[A-Za-z0-9_.-]+", zone)))
    elif re.fullmatch(r"[0-9.]+", host):  # all digits and dots: an IPv4 address, not a hostname
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            ok = False
    else:
        ok = ok and len(host) <= 253 and bool(HOSTNAME.fullmatch(host))
    if not ok:
        raise ConfigError(
            f"{key}={endpoint!r}: expected host:port, the host a hostname, an IPv4 address or an "
            "[IPv6 address] and the port 1-65535, e.g. 10.0.0.5:29400 or [fd00::5]:29400"
        )
    return host, int(port)


def validate(cfg: RunConfig, check_paths: bool = True) -> None:
    """Checks that need no model or data; model-dependent checks happen where the model is built.
    `check_paths=False` for a run's saved config read back (eval, predict, export): its train.resume
    records where that run started, a checkpoint that may have been pruned since."""
    _check_fields(cfg, "")
    if not cfg.output_dir.strip():
        raise ConfigError(
            "output_dir is empty: give the run's folder (an empty one would write the run into the current folder)"
        )
    if not cfg.model.name_or_path.strip():
        raise ConfigError("model.name_or_path is empty: give a local HF folder, embedded:<name> or a hub id")
    m, t = cfg.method, cfg.train
    cls = method_class(m.name)
    if not isinstance(m, cls.Config):
        raise ConfigError(
            f"method: the section is a {type(m).__name__}, not method.name={m.name}'s "
            f"{cls.__name__}.Config (build it with {cls.__name__}.section(...))"
        )
    cls.check_config(m)  # the method's own rules (ptune_dist/methods)
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas={t.betas}: expected two numbers")
    _check_resume(t.resume, check_paths)
    _check_distributed(cfg)
    _check_launch(cfg)
    quant_rules.validate(cfg.model, cls.trains_base, m.name, cfg.distributed, cfg.train.device)
    if not cfg.tasks:
        raise ConfigError("tasks: at least one task is needed")
    names = [task.name for task in cfg.tasks]
    for i, name in enumerate(names):
        if not TASK_NAME.fullmatch(name):
            raise ConfigError(
                f"tasks.{i}.name={name!r}: a task name is letters, digits, _ and - only, not empty "
                "(it becomes metric keys and file names)"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks: names must be unique, got {names}")
    for i, task in enumerate(cfg.tasks):
        twice = sorted({lab for lab in task.labels if task.labels.count(lab) > 1})
        if twice:
            raise ConfigError(
                f"tasks.{i}.labels={task.labels}: {', '.join(map(repr, twice))} given twice; "
                "each label once (its place is its class index)"
            )
    types = {task.type for task in cfg.tasks}
    if len(types) > 1:
        raise ConfigError(f"tasks: one batch mixes tasks of one type only, got types {sorted(types)}")
    for i, task in enumerate(cfg.tasks):
        key = f"tasks.{i}"
        if "{soft}" in task.template and not cls.placement.soft:
            raise ConfigError(
                f"{key}.template places {{soft}}, but method.name={m.name} has no virtual "
                "input tokens (deep prompts sit in every layer); remove {soft}"
            )
        if task.type == "token_classification" and task.scoring != "head":
            raise ConfigError(f"{key}.scoring={task.scoring!r}: token_classification needs scoring=head")
        if task.type == "generation" and task.scoring == "head":
            raise ConfigError(f"{key}.scoring=head: generation tasks are scored by the LM head")
        if m.init in NEEDS_CLASS_LABELS and task.type != "classification":
            raise ConfigError(f"method.init={m.init} needs class labels; {key}.type is {task.type}")
        for label, words in task.verbalizer.items():
            if not words:
                raise ConfigError(
                    f"{key}.verbalizer.{label}: no label words; give at least one (e.g. "
                    f"{label}: [' {label}']), or its score would be -infinity"
                )
            if "" in words:
                raise ConfigError(
                    f"{key}.verbalizer.{label}.{words.index('')}: an empty label word; a word "
                    "needs at least one character (a leading space included: ' yes')"
                )


def _check_resume(resume: str, check_paths: bool) -> None:
    """auto, never, or a checkpoint folder that is there (a typo would fail only after the model loads)."""
    if resume in ("auto", "never"):
        return
    choose = (
        "choose auto (the newest complete checkpoint in output_dir), never (start afresh) or the path "
        "of a checkpoint folder (output_dir/checkpoints/step-N)"
    )
    if not resume.strip():
        raise ConfigError(f"train.resume is empty; {choose}")
    path = Path(resume)
    if not check_paths or path.is_dir():
        return
    found = "not a folder" if path.exists() else "no such folder"
    if resume.strip().lower() in ("auto", "never"):
        found += f" (did you mean {resume.strip().lower()}?)"
    raise ConfigError(f"train.resume={resume!r}: {found}; {choose}")


def _check_distributed(cfg: RunConfig) -> None:
    d = cfg.distributed
    if d.engine != "deepspeed":
        if d.zero_stage or d.offload_optimizer or d.offload_params or d.zero_extra:
            raise ConfigError("distributed.zero_stage / offload_* / zero_extra need distributed.engine=deepspeed")
        return
    owned = {"stage": "zero_stage", "offload_optimizer": "offload_optimizer", "offload_param": "offload_params"}
    for key in d.zero_extra:
        if key in owned:
            raise ConfigError(
                f"distributed.zero_extra.{key}: set distributed.{owned[key]} instead "
                "(ptune validates it and builds the DeepSpeed section)"
            )
    if cfg.train.on_nonfinite == "skip":
        raise ConfigError(
            "train.on_nonfinite=skip needs distributed.engine=torch: DeepSpeed applies an update "
            "before ptune can see it is non-finite, so only train.on_nonfinite=stop is safe there"
        )
    check_offload(d)  # config/offload.py: the rule the planner asks too
    if cfg.train.optimizer != "adamw":
        raise ConfigError(
            f"train.optimizer={cfg.train.optimizer}: with distributed.engine=deepspeed use adamw "
            "(ZeRO flattens the parameters, which undoes Adafactor's factored statistics)"
        )


def _check_launch(cfg: RunConfig) -> None:
    L = cfg.launch
    if L.node_rank >= L.nnodes:
        raise ConfigError(
            f"launch.node_rank={L.node_rank} must be < launch.nnodes={L.nnodes} (node ranks count from 0)"
        )
    if L.rdzv_endpoint:
        rdzv_address(L.rdzv_endpoint)
    elif L.nnodes > 1 and L.backend == "local":
        raise ConfigError(
            f"launch.rdzv_endpoint is empty, but launch.nnodes={L.nnodes} on the local backend needs "
            "node 0's host:port (e.g. launch.rdzv_endpoint=10.0.0.5:29400)"
        )
