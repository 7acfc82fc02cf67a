"""The shape a YAML value must have for its schema field, and the YAML reading that keeps text as written.

`TextLoader` is OmegaConf's loader (duplicate keys and alias limits refused) whose only implicit types
are null and merge keys: every other plain scalar is its source text (`90:00`, `0x10`, `007`, `yes`),
which the schema then converts to each field's type. `shaped` checks a file's or override's structure
against the schema before anything merges (a section is a mapping, `tasks` a list of mappings, a list
field a list, a single value neither) and names the key and the file.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import yaml

from ptune_dist.errors import ConfigError

try:  # the loader OmegaConf.load uses (its float forms, duplicate-key and alias checks); moved in 2.4
    from omegaconf.omegaconf import get_yaml_loader
except ImportError:  # pragma: no cover
    from omegaconf._utils import get_yaml_loader

_TYPED_LOADER = get_yaml_loader()
_KEPT_TAGS = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")  # None; `<<: *anchor` merges


class TextLoader(_TYPED_LOADER):
    """OmegaConf's loader (duplicate keys and alias limits refused) whose only implicit types are null and
    merge keys: every other plain scalar is its source text."""


TextLoader.yaml_implicit_resolvers = {
    first: kept
    for first, resolvers in _TYPED_LOADER.yaml_implicit_resolvers.items()
    if (kept := [(tag, regexp) for tag, regexp in resolvers if tag in _KEPT_TAGS])
}


def unwrap(tp):
    """Optional[X] as X."""
    if typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _show(value) -> str:
    """A value found where it does not fit: `5`, `a mapping {'a': 'b'}`, `a list ['x']`."""
    kind = "a mapping " if isinstance(value, dict) else "a list " if isinstance(value, list) else ""
    plain = isinstance(value, str) and re.fullmatch(r"[\w.:+-]+", value)  # a plain scalar as written
    text = "null" if value is None else value if plain else repr(value)
    return kind + (text if len(text) <= 80 else text[:77] + "...")


def shaped(value, tp, key: str, where: str):
    """`value` (from YAML or an override) checked against the schema type `tp` at `key`, structure only:
    a section is a mapping, a list a list, a single value neither. Returned with the scalars under a
    Dict[str, Any] field typed as YAML types them (what DeepSpeed is given). `${...}` is left to OmegaConf."""
    if isinstance(value, str) and "${" in value:
        return value
    optional = typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)
    tp = unwrap(tp)
    if tp is Any:
        return _typed(value)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}{key} cannot be null (~, null or an empty value); give {_what(tp, key)}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key} must be {_what(tp, key)}, found {_show(value)}")
        hints = typing.get_type_hints(tp) if origin is None else dict.fromkeys(value, args[1])
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{where}{key or 'the top level'}: a key is {_show(k)}; a key is text (quote it)")
        # a key the schema lacks stays as it is: OmegaConf's error lists the keys allowed there
        return {
            k: shaped(v, hints[k], f"{key}.{k}" if key else k, where) if k in hints else v for k, v in value.items()
        }
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}{key} must be {_what(tp, key)}, found {_show(value)}")
        return [shaped(v, args[0], f"{key}.{i}", where) for i, v in enumerate(value)]
    if isinstance(value, (dict, list)):
        quote = " (quote it to keep it as written)" if tp is str else ""
        raise ConfigError(f"{where}{key} must be {_what(tp, key)}, found {_show(value)}{quote}")
    return value


_ONE = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}
_MANY = {str: "text values", int: "whole numbers", float: "numbers", bool: "true/false values"}


def _what(tp, key: str) -> str:
    """What a value of type `tp` at `key` looks like, for a message."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {key}.* keys" if key else "a mapping of config keys"
    if origin is list:
        if dataclasses.is_dataclass(args[0]):
            return f"a list of mappings, one per item ({key}.N.* keys)"
        return f"a list of {_MANY.get(args[0], 'values')}"
    if origin is dict:
        inner = typing.get_args(args[1])
        return (
            "a mapping"
            if args[1] is Any or not inner
            else f"a mapping of names to lists of {_MANY.get(inner[0], 'values')}"
        )
    return _ONE.get(tp, "a value")


def _typed(value):
    """Text as YAML types it (`5` an int, `yes` a bool), in mappings and lists; quoted text that YAML would
    read as a mapping or list stays text."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if (
        isinstance(value, str)
        and value
        and any(regexp.match(value) for _, regexp in _TYPED_LOADER.yaml_implicit_resolvers.get(value[0], []))
    ):
        return yaml.load(value, Loader=_TYPED_LOADER)
    return value
