"""TaskSpec: what the model needs to know of one task (label set, how it is scored, label-word token ids)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ptune_dist.errors import ConfigError


@dataclass
class TaskSpec:
    name: str
    type: str  # classification | generation | token_classification
    scoring: str = "verbalizer"  # verbalizer | head
    labels: list[str] = field(default_factory=list)
    label_words: list[list[str]] = field(default_factory=list)  # per label
    label_word_ids: list[list[int]] = field(default_factory=list)  # per label: first token of each word
    pooling: str = "cls"
    max_new_tokens: int = 32

    @property
    def uses_head(self) -> bool:
        return self.scoring == "head" or self.type == "token_classification"


def label_word_ids(words: list[list[str]], labels: list[str], tokenizer, key: str) -> list[list[int]]:
    """The first token of every label word; distinct labels must not share a first token."""
    out, owner = [], {}
    for label, ws in zip(labels, words):
        ids = []
        for w in ws:
            toks = tokenizer(w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ConfigError(f"{key}.verbalizer.{label}: label word {w!r} tokenizes to nothing")
            if owner.get(toks[0], label) != label:
                raise ConfigError(
                    f"{key}.verbalizer: label words {w!r} ({label}) and one of {owner[toks[0]]!r} start with the "
                    f"same token {tokenizer.convert_ids_to_tokens(toks[0])!r}; the scores could not tell them apart"
                )
            owner[toks[0]] = label
            ids.append(toks[0])
        out.append(ids)
    return out
