"""Free text taken exactly as written: templates, verbalizer words, labels, method.init_text.

Fields declared with `schema.text()` are user text. OmegaConf would expand a `${...}` in them (an
environment variable in a prompt) or fail on it, so that text never reaches OmegaConf: as each YAML
file, override or saved config.yaml is read, every string under a free-text field is swapped for a
token OmegaConf carries as a plain string (`Literals.protect`), and the text is put back once the
config is built (`Literals.restore`). Interpolation in the other keys works as OmegaConf does it.
"""

from __future__ import annotations

import dataclasses
import re
import typing

from .schema import RunConfig


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


def key_path(key: str) -> tuple:
    """An override's dotted key as a path (`tasks.0.template`, `tasks[0].template`: tasks, *, template)."""
    return tuple("*" if part.isdigit() else part for part in re.split(r"[.\[\]]+", key) if part)


def _method_paths() -> list[tuple]:
    """The free-text fields of every registered method's own Config (a method registered at run time too)."""
    from ptune_dist.methods import METHODS

    return [("method", *p) for cls in METHODS.values() for p in _literal_paths(cls.Config)]


def _under_literal(path: tuple) -> bool:
    paths = LITERAL_PATHS + tuple(_method_paths()) if path[:1] == ("method",) else LITERAL_PATHS
    return any(len(path) >= len(p) and all(a == b for a, b in zip(p, path)) for p in paths)


class Literals:
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
