"""Task presets: the template, verbalizer and data format of known tasks (`tasks.N.preset`).

SuperGLUE presets read the official JSONL format (BoolQ: passage, question, label true/false; CB and
RTE: premise, hypothesis, label name; COPA: premise, choice1, choice2, question cause/effect, label
0/1; WiC: word, sentence1, sentence2, label true/false) or the hub's `super_glue` rows (integer labels
in the same order). WSC reads the hub's flat rows (text, span1_text the noun, span2_text the pronoun,
label 0/1); the official JSONL nests the spans under `target`, so lift them to the top first. Label words are written
without a leading space; for causal LMs, whose answer follows a space, one is added. Anything the
task sets itself wins over the preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ptune_dist.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    template: str
    verbalizer: dict
    train: str = ""
    eval: str = ""


PRESETS = {
    "support": Preset(
        "{text}{answer}",
        {"account": ["account"], "billing": ["billing"], "shipping": ["shipping"], "technical": ["technical"]},
        train="builtin:support",
        eval="builtin:support",
    ),
    "boolq": Preset("{passage}\nQuestion: {question}?\nAnswer:{answer}", {"false": ["no"], "true": ["yes"]}),
    "cb": Preset(
        "{premise}\nQuestion: {hypothesis} True, False, or Neither?\nAnswer:{answer}",
        {"entailment": ["true"], "contradiction": ["false"], "neutral": ["neither"]},
    ),
    "rte": Preset(
        "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:{answer}",
        {"entailment": ["true"], "not_entailment": ["false"]},
    ),
    "copa": Preset(
        "{premise} What was the {question}? First: {choice1} Second: {choice2}\nAnswer:{answer}",
        {"0": ["first"], "1": ["second"]},
    ),
    "wic": Preset(
        "{sentence1}\n{sentence2}\nQuestion: Is the word '{word}' used in the same way in the two sentences "
        "above?\nAnswer:{answer}",
        {"false": ["no"], "true": ["yes"]},
    ),
    "wsc": Preset(
        "{text}\nQuestion: In the passage above, does the pronoun '{span2_text}' refer to "
        "'{span1_text}'?\nAnswer:{answer}",
        {"false": ["no"], "true": ["yes"]},
    ),
}


def apply_preset(task, kind: str, key: str):
    """A copy of `task` (a TaskConfig) with the preset's values where the task left them empty."""
    if not task.preset:
        return task
    if task.preset not in PRESETS:
        raise ConfigError(f"{key}.preset={task.preset!r} is not one of {sorted(PRESETS)}")
    p = PRESETS[task.preset]
    space = " " if kind == "causal_lm" else ""
    verbalizer = {label: [space + w for w in words] for label, words in p.verbalizer.items()}
    return dataclasses.replace(
        task,
        template=task.template or p.template,
        verbalizer=task.verbalizer or verbalizer,
        train=task.train or p.train,
        eval=task.eval or p.eval,
    )
