"""Load a run config: YAML files merged in order onto the dataclass schema, then `key=value` overrides.

Every problem becomes a ConfigError whose message starts with the dotted key (and names the file for
a YAML file's problems) and says what is allowed:

- YAML files, overrides and saved config.yaml read by `from_yaml` keep every plain scalar as the text
  written (`90:00`, `0x10`, `007`, `1.10`, `yes` stay text; YAML 1.1 would retype them): only `~`,
  `null` and an empty value are None, and the schema converts text to each field's type (`5` to an
  int, `yes` / `true` to a bool). Values under a `Dict[str, Any]` field (distributed.zero_extra,
  settings passed on to DeepSpeed) take YAML's own types.
- Before anything merges, a file's or override's structure is checked against the schema: a section
  is a mapping, `tasks` a list of mappings, a list field a list, a single value neither; an override
  names an existing list item (tasks.0, not tasks.5 of one task).

The `method` section is resolved by `method.name` (the last one the files and overrides set) into that
method's own Config (ptune_dist/methods: a MethodConfig subclass with its knobs): a key that only other
methods have is an error naming it and them, unless it holds their default (an old run's saved config.yaml
lists every method's keys, each at its default; those are dropped).

The built config is checked by validate.py; free text (templates, label words) is kept away from
OmegaConf's `${...}` interpolation by literal.py.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import OmegaConf
from omegaconf._utils import get_omega_conf_dumper
from omegaconf.errors import OmegaConfBaseException

from ptune_dist.errors import ConfigError
from ptune_dist.methods import DEFAULT_METHOD, PromptMethod, method_class, owners

from .literal import Literals, key_path
from .schema import RunConfig
from .shape import TextLoader, shaped, unwrap
from .validate import validate


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> RunConfig:
    literals = Literals()
    files = [Path(f) for f in files]
    layers = [(f"config file {path}", _read_yaml(path, literals)) for path in files]
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
    method = method_class(_method_name(layers, overrides))
    merged = _schema(method)
    for where, layer in layers:
        layer = _method_keys(layer, method, where)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(layer))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{literals.text(_explain(e))} ({where})") from None
        except (TypeError, ValueError, IndexError) as e:
            raise ConfigError(literals.text(f"{where}: cannot merge ({e})")) from None
    try:
        for item in overrides:
            key, value = item.split("=", 1)  # list items by index: tasks.0.template=...
            key, tp = _override_target(item, key, merged, method)
            value = _parse_value(value, OmegaConf.select(merged, key, default=None))
            if key.startswith("method.") and key.count(".") == 1:
                if not _method_keys({"method": {key[7:]: value}}, method, f"override {item!r}")["method"]:
                    continue  # another method's key at its default
            elif key == "method" and isinstance(value, dict):
                value = _method_keys({"method": value}, method, f"override {item!r}")["method"]
            if tp is not None:
                value = shaped(value, tp, key, "")
            OmegaConf.update(merged, key, literals.protect(value, key_path(key)), merge=True)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:  # ours (a ValueError too), already naming the key
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(literals.text(_explain(e))) from None
    except (TypeError, ValueError, IndexError) as e:
        raise ConfigError(literals.text(f"config: cannot merge ({e})")) from None
    literals.restore(cfg)
    # a run's own saved config (eval, predict, export read it back) may name a checkpoint pruned since
    validate(cfg, check_paths=not any((path.parent / "manifest.json").is_file() for path in files))
    return cfg


def _parse_value(value: str, current):
    """An override's value for a key that now holds `current`.

    A text key takes the text as written (`#`, `{...}`, `no` and `1e3` included); other keys take
    YAML's structure ([lists], {maps}) with every scalar kept as text, as in a YAML file, which the
    schema then converts to the field's type, so `labels=[yes, no]` stays two strings and `steps=5`
    becomes an int. `null` or `~` alone is None.
    """
    if isinstance(current, str):
        return value
    try:
        return yaml.load(value, Loader=TextLoader) if value else value
    except yaml.YAMLError:
        return value


def _method_name(layers: list[tuple[str, dict]], overrides: list[str]) -> str:
    """The method.name the files and overrides set last (DEFAULT_METHOD when none does)."""
    name = DEFAULT_METHOD
    for _, layer in layers:
        section = layer.get("method")
        name = section.get("name", name) if isinstance(section, dict) else name
    for item in overrides:
        key, value = item.split("=", 1)
        key = key.strip()
        if key == "method.name":
            name = value
        elif key == "method":
            value = _parse_value(value, None)
            name = value.get("name", name) if isinstance(value, dict) else name
    return name if isinstance(name, str) else DEFAULT_METHOD


def _schema(method: type[PromptMethod]):
    """The run config's schema with `method` as the method's own Config."""
    merged = OmegaConf.structured(RunConfig)
    merged.method = OmegaConf.structured(method.Config)
    return merged


def _method_keys(layer: dict, method: type[PromptMethod], where: str) -> dict:
    """The layer with its method section's keys of other methods dropped where they hold those methods' default
    (an old saved config lists them all); any other such key is a ConfigError naming it and its methods. The
    section is then checked in shape against the method's Config."""
    section = layer.get("method")
    if not isinstance(section, dict):
        return layer
    own = {f.name for f in dataclasses.fields(method.Config)}
    kept = {}
    for key, value in section.items():
        if key in own or not owners(key):  # an unknown key: OmegaConf's error lists the keys allowed
            kept[key] = value
        elif not _at_default(key, value):
            raise ConfigError(
                f"method.{key}={value}: method.name={method.name} has no key {key}; it is a key of "
                f"{', '.join(owners(key))} ({where})"
            )
    return {**layer, "method": shaped(kept, method.Config, "method", f"{where}: ")}


def _at_default(key: str, value) -> bool:
    """Whether `value` is, for every method that has `key`, that method's default."""
    for name in owners(key):
        config = method_class(name).Config
        try:
            given = getattr(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config), {key: value})), key)
        except (OmegaConfBaseException, TypeError, ValueError):
            return False
        if given != getattr(config(), key):
            return False
    return True


def _override_target(item: str, key: str, merged, method: type[PromptMethod]) -> tuple[str, Any]:
    """An override's key in dots (tasks[0].x: tasks.0.x) and the schema type it sets; None where the
    schema does not say (an unknown key: OmegaConf's error lists the keys allowed there). An index
    must name an item the list has: tasks are added by a YAML file or tasks=[...], not by an index."""
    dotted = key.strip().replace("[", ".").replace("]", "")
    parts = dotted.split(".")
    if not dotted.strip("."):
        raise ConfigError(
            f"override {item!r}: the key before '=' is empty; expected dotted.key=value, e.g. train.steps=5"
        )
    if "" in parts:
        raise ConfigError(
            f"override {item!r}: the key {key!r} has an empty part; expected dotted.key=value, e.g. train.steps=5"
        )
    tp: Any = RunConfig
    for i, part in enumerate(parts):
        here, tp = ".".join(parts[:i]), unwrap(tp)
        if dataclasses.is_dataclass(tp):
            tp = method.Config if (i, part) == (0, "method") else typing.get_type_hints(tp).get(part)
            if tp is None:
                return dotted, None
        elif typing.get_origin(tp) is list:
            _check_index(here, part, OmegaConf.select(merged, here, default=None))
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
            if i < len(parts) - 1 and tp is not Any:
                return dotted, None  # inside a mapping's value: OmegaConf's checks
        elif tp is not Any:
            raise ConfigError(f"{dotted}: {here} is a single value; there are no keys under it")
    return dotted, tp


def _check_index(key: str, part: str, current) -> None:
    n = len(current) if isinstance(current, typing.Sized) else None
    if n is None or (part.isascii() and part.isdigit() and int(part) < n):
        return
    items = ", ".join(f"{key}.{i}" for i in range(min(n, 3))) + (f" ... {key}.{n - 1}" if n > 3 else "")
    if key == "tasks":
        raise ConfigError(
            f"tasks.{part}: the config has {n} task{'s' * (n != 1)} ({items or 'none'}); tasks are "
            "added in a YAML file or with tasks=[...]"
        )
    raise ConfigError(
        f"{key}.{part}: {key} has {n} item{'s' * (n != 1)} ({items or 'none'}); set the whole list with {key}=[...]"
    )


def _read_yaml(path: Path, literals: Literals):
    if path.is_dir():
        raise ConfigError(f"config file {path}: is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read it ({e})") from None
    return _layer(text, f"config file {path}", literals)


def _layer(text: str, where: str, literals: Literals):
    """One YAML document as an OmegaConf layer, its shape checked and its free text swapped for tokens."""
    try:
        loaded = yaml.load(text, Loader=TextLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}: not valid YAML ({at}{getattr(e, 'problem', None) or e})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys at the top level")
    loaded = shaped(loaded, RunConfig, "", f"{where}: ")
    return literals.protect(loaded, ())


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
    return yaml.dump(
        dataclasses.asdict(cfg),
        Dumper=get_omega_conf_dumper(),
        default_flow_style=False,
        allow_unicode=True,
        sort_keys=False,
    )


def from_yaml(text: str) -> RunConfig:
    literals = Literals()
    layer = _layer(text, "config", literals)
    method = method_class(_method_name([("config", layer)], []))
    try:
        cfg = OmegaConf.to_object(
            OmegaConf.merge(_schema(method), OmegaConf.create(_method_keys(layer, method, "config")))
        )
    except OmegaConfBaseException as e:
        raise ConfigError(literals.text(_explain(e))) from None
    literals.restore(cfg)
    return cfg
