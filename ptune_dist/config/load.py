"""Load a run config: YAML files merged in order onto the dataclass schema, then `key=value` overrides.

Every problem becomes a ConfigError whose message starts with the dotted key and says what is allowed.
The schema declares each field's domain (schema.py: `choice`, `number`, `text`); `validate` checks
every field against it by walking the dataclass tree, then the combinations that cannot work.

Free text (fields declared with `text()`: templates, verbalizer words, labels, method.init_text) is
taken exactly as written. OmegaConf would expand a `${...}` in it (an environment variable in a
prompt) or fail on it, so that text never reaches OmegaConf: as each YAML file, override or saved
config.yaml is read, every string under a free-text field is swapped for a token OmegaConf carries as
a plain string, and the text is put back once the config is built (`_Literals`). Interpolation in the
other keys works as OmegaConf does it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import typing
from pathlib import Path
from typing import Iterable

import yaml
from omegaconf import OmegaConf
from omegaconf._utils import get_omega_conf_dumper
from omegaconf.errors import OmegaConfBaseException

from ptune_dist.errors import ConfigError
from ptune_dist.methods import METHODS
from ptune_dist.model import quant

from .schema import RunConfig

try:  # the loader OmegaConf.load uses (its float forms, duplicate-key and alias checks); moved in 2.4
    from omegaconf.omegaconf import get_yaml_loader
except ImportError:  # pragma: no cover
    from omegaconf._utils import get_yaml_loader

TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")  # names become metric keys and file names


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> RunConfig:
    literals = _Literals()
    layers = [OmegaConf.structured(RunConfig)]
    for f in files:
        layers.append(_read_yaml(Path(f), literals))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
    try:
        merged = OmegaConf.merge(*layers)
        for item in overrides:
            key, value = item.split("=", 1)  # list items by index: tasks.0.template=...
            value = _parse_value(value, OmegaConf.select(merged, key, default=None))
            OmegaConf.update(merged, key, literals.protect(value, _path(key)), merge=True)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(literals.text(_explain(e))) from None
    except (TypeError, ValueError, IndexError) as e:
        raise ConfigError(literals.text(f"config: cannot merge ({e})")) from None
    literals.restore(cfg)
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


def _read_yaml(path: Path, literals: "_Literals"):
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read it ({e})") from None
    return _layer(text, f"config file {path}", literals)


def _layer(text: str, where: str, literals: "_Literals"):
    """One YAML document as an OmegaConf layer, its free text swapped for tokens."""
    try:
        loaded = yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}: not valid YAML ({at}{getattr(e, 'problem', None) or e})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys at the top level")
    try:
        return OmegaConf.create(literals.protect(loaded, ()))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{literals.text(_explain(e))} ({where})") from None


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "config"
    msg = str(e).split("\n")[0]
    obj = getattr(e, "object_type", None)
    if "not in" in msg and obj is not None and dataclasses.is_dataclass(obj):
        allowed = ", ".join(f.name for f in dataclasses.fields(obj))
        return f"config key {key} is unknown; allowed here: {allowed}"
    return f"config key {key}: {msg}"


def to_yaml(cfg: RunConfig) -> str:
    """The config as YAML (OmegaConf's layout) that load_config and from_yaml read back to the same config,
    free text included as written (dumped from the dataclasses: OmegaConf would parse a `${` in it)."""
    return yaml.dump(dataclasses.asdict(cfg), Dumper=get_omega_conf_dumper(), default_flow_style=False,
                     allow_unicode=True, sort_keys=False)


def from_yaml(text: str) -> RunConfig:
    literals = _Literals()
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), _layer(text, "config", literals)))
    except OmegaConfBaseException as e:
        raise ConfigError(literals.text(_explain(e))) from None
    literals.restore(cfg)
    return cfg


# ---- free text, kept away from OmegaConf -------------------------------------------------------

def _literal_paths(cls, prefix: tuple = ()):
    """Paths of the schema's free-text fields, `*` for a list index: ("tasks", "*", "template"), ..."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, tp = prefix + (f.name,), hints[f.name]
        if f.metadata.get("literal"):
            yield path
        elif dataclasses.is_dataclass(tp):
            yield from _literal_paths(tp, path)
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from _literal_paths(typing.get_args(tp)[0], path + ("*",))


LITERAL_PATHS = tuple(_literal_paths(RunConfig))


def _path(key: str) -> tuple:
    """An override's dotted key as a path (`tasks.0.template`, `tasks[0].template`: tasks, *, template)."""
    return tuple("*" if part.isdigit() else part for part in re.split(r"[.\[\]]+", key) if part)


def _under_literal(path: tuple) -> bool:
    return any(len(path) >= len(p) and all(a == b for a, b in zip(p, path)) for p in LITERAL_PATHS)


class _Literals:
    """Free text swapped for tokens while OmegaConf holds the config, and put back after."""

    TOKEN = "\ue000ptune-literal-{}\ue000"  # a private-use character: no text a user writes holds it

    def __init__(self):
        self.table: dict[str, str] = {}

    def protect(self, value, path: tuple):
        """`value` as found at `path`, each string under a free-text field swapped for a token."""
        if _under_literal(path):
            return self._swap(value)
        if isinstance(value, dict):
            return {k: self.protect(v, path + (str(k),)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.protect(v, path + ("*",)) for v in value]
        return value

    def _swap(self, value):
        if isinstance(value, str):
            token = self.TOKEN.format(len(self.table))
            self.table[token] = value
            return token
        if isinstance(value, dict):
            return {k: self._swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._swap(v) for v in value]
        return value

    def _back(self, value):
        if isinstance(value, str):
            return self.table.get(value, value)
        if isinstance(value, dict):
            return {k: self._back(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._back(v) for v in value]
        return value

    def restore(self, obj) -> None:
        """Put the text back into the built config (a dataclass tree), in place."""
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("literal"):
                setattr(obj, f.name, self._back(value))
            elif dataclasses.is_dataclass(value):
                self.restore(value)
            elif isinstance(value, list):
                for item in value:
                    if dataclasses.is_dataclass(item):
                        self.restore(item)

    def text(self, message: str) -> str:
        """An error message with the text in place of its tokens."""
        for token, value in self.table.items():
            message = message.replace(token, value).replace(token.encode("unicode_escape").decode(), value)
        return message


# ---- validation -----------------------------------------------------------------------------------

def _check_fields(obj, prefix: str) -> None:
    """Every field against what its declaration allows (choices, numeric domain), the whole tree down."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(choices)}")
        domain = f.metadata.get("domain")
        if domain is not None and value is not None:
            for item in value if isinstance(value, list) else [value]:
                problem = domain.problem(item)
                if problem:
                    raise ConfigError(f"{key}={value}: every value {problem}" if isinstance(value, list)
                                      else f"{key}={value} {problem}")
        elif isinstance(value, float) and not math.isfinite(value):  # a float without a declared domain too
            raise ConfigError(f"{key}={value} must be a finite number")
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_fields(item, f"{key}.{i}.")


def _positive(value, key: str, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{key}={value} must be {'>= 0' if zero_ok else '> 0'}")


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
        raise ConfigError(f"{key}={endpoint!r}: expected host:port, the host a hostname, an IPv4 address or an "
                          "[IPv6 address] and the port 1-65535, e.g. 10.0.0.5:29400 or [fd00::5]:29400")
    return host, int(port)


def validate(cfg: RunConfig) -> None:
    """Checks that need no model or data; model-dependent checks happen where the model is built."""
    _check_fields(cfg, "")
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir is empty: give the run's folder (an empty one would write the run into "
                          "the current folder)")
    m, t = cfg.method, cfg.train
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
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas={t.betas}: expected two numbers")
    _check_distributed(cfg)
    _check_launch(cfg)
    quant.validate(cfg.model, cls.trains_base, m.name, cfg.distributed)
    if not cfg.tasks:
        raise ConfigError("tasks: at least one task is needed")
    names = [task.name for task in cfg.tasks]
    for i, name in enumerate(names):
        if not TASK_NAME.fullmatch(name):
            raise ConfigError(f"tasks.{i}.name={name!r}: a task name is letters, digits, _ and - only, not empty "
                              "(it becomes metric keys and file names)")
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
    if cfg.train.on_nonfinite == "skip":
        raise ConfigError("train.on_nonfinite=skip needs distributed.engine=torch: DeepSpeed applies an update "
                          "before ptune can see it is non-finite, so only train.on_nonfinite=stop is safe there")
    if d.offload_optimizer and d.zero_stage < 2:
        raise ConfigError("distributed.offload_optimizer needs distributed.zero_stage 2 or 3")
    if d.offload_params and d.zero_stage != 3:
        raise ConfigError("distributed.offload_params needs distributed.zero_stage=3")
    if cfg.train.optimizer != "adamw":
        raise ConfigError(f"train.optimizer={cfg.train.optimizer}: with distributed.engine=deepspeed use adamw "
                          "(ZeRO flattens the parameters, which undoes Adafactor's factored statistics)")


def _check_launch(cfg: RunConfig) -> None:
    L = cfg.launch
    if L.node_rank >= L.nnodes:
        raise ConfigError(f"launch.node_rank={L.node_rank} must be < launch.nnodes={L.nnodes} (node ranks count "
                          "from 0)")
    if L.rdzv_endpoint:
        rdzv_address(L.rdzv_endpoint)
    elif L.nnodes > 1 and L.backend == "local":
        raise ConfigError(f"launch.rdzv_endpoint is empty, but launch.nnodes={L.nnodes} on the local backend needs "
                          "node 0's host:port (e.g. launch.rdzv_endpoint=10.0.0.5:29400)")
