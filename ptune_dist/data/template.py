"""Prompt-learning templates: where the input fields, the virtual tokens and the answer slot go.

    "{premise}\\nQuestion: {hypothesis} True or False?\\nAnswer:{answer}"

`{name}` is replaced by the row's field, `{soft}` marks where the virtual tokens go (shallow
methods; without it they go first), `{answer}` is the answer slot: a mask token for masked LMs, the
end of the text for causal LMs (it must end the template there). `{{` and `}}` are literal braces.
The text between slots is tokenized as one string, so tokenization matches the plain text.
A field must hold text (ptune_dist.data.rows says what counts); anything else is a BadRow.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ptune_dist.errors import ConfigError

from .rows import text

SLOTS = ("soft", "answer")


@dataclass
class Part:
    kind: str  # "text" (literal), "field", "soft", "answer"
    value: str = ""


class Template:
    def __init__(self, text: str, key: str):
        self.text, self.key = text, key
        self.parts: list[Part] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise ConfigError(f"{key}={text!r}: {e}") from None
        for literal, name, spec, conv in parsed:
            if literal:
                self.parts.append(Part("text", literal))
            if name is None:
                continue
            if spec or conv or not name.isidentifier():
                raise ConfigError(f"{key}: placeholder {{{name}}} must be a plain field name")
            self.parts.append(Part(name if name in SLOTS else "field", name))
        for slot in SLOTS:
            if sum(p.kind == slot for p in self.parts) > 1:
                raise ConfigError(f"{key}: {{{slot}}} may appear once")

    @property
    def fields(self) -> list[str]:
        return [p.value for p in self.parts if p.kind == "field"]

    def has(self, slot: str) -> bool:
        return any(p.kind == slot for p in self.parts)

    def ends_with_answer(self) -> bool:
        return bool(self.parts) and self.parts[-1].kind == "answer"

    def runs(self, row: dict, where: str) -> list[tuple[str, str]]:
        """[("text", s) | ("soft", "") | ("answer", "")]: the row rendered, text merged between slots."""
        out: list[tuple[str, str]] = []
        for part in self.parts:
            if part.kind in SLOTS:
                out.append((part.kind, ""))
                continue
            if part.kind == "field":
                piece = text(row, part.value, where, self.key)  # never str(None) or a dict's repr
            else:
                piece = part.value
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + piece)
            else:
                out.append(("text", piece))
        return out
