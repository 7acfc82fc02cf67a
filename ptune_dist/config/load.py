"""Load a run config: YAML files merged in order onto the dataclass schema, then `key=value` overrides.

Every problem becomes a ConfigError whose message starts with the dotted key and says what is allowed.
The built config is checked by validate.py; free text (templates, label words) is kept away from
OmegaConf's `${...}` interpolation by literal.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import yaml
from omegaconf import OmegaConf
from omegaconf._utils import get_omega_conf_dumper
from omegaconf.errors import OmegaConfBaseException

from ptune_dist.errors import ConfigError

from .literal import Literals, key_path
from .schema import RunConfig
from .validate import validate

try:  # the loader OmegaConf.load uses (its float forms, duplicate-key and alias checks); moved in 2.4
    from omegaconf.omegaconf import get_yaml_loader
except ImportError:  # pragma: no cover
    from omegaconf._utils import get_yaml_loader


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> RunConfig:
    literals = Literals()
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
            OmegaConf.update(merged, key, literals.protect(value, key_path(key)), merge=True)
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


def _read_yaml(path: Path, literals: Literals):
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read it ({e})") from None
    return _layer(text, f"config file {path}", literals)


def _layer(text: str, where: str, literals: Literals):
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
    literals = Literals()
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), _layer(text, "config", literals)))
    except OmegaConfBaseException as e:
        raise ConfigError(literals.text(_explain(e))) from None
    literals.restore(cfg)
    return cfg
