"""Rows -> token ids, per task type: classification (template + verbalizer or head), generation
(instruction or template, loss on the output only) and token classification.

Shallow methods reserve `num_soft` placeholder slots that the model fills with the virtual tokens
(positions in `soft`); they go where the template says `{soft}`, else right after the tokenizer's
leading special tokens. `budget` is the most tokens an example may have.

Every row goes through the task's RowCheck (ptune_dist.data.rows) first: a row that does not fit its
task (a field missing or not text, a label unknown, tokens and tags that do not match) raises BadRow
naming the row and the field, and the encoders below see text fields as str only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptune_dist.errors import ConfigError, DataError

from .rows import BadRow, RowCheck
from .task import TaskSpec
from .template import Template

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    task_id: int
    soft: list[int] = field(default_factory=list)  # positions of the virtual-token slots
    labels: int | list[int] | None = None  # class index, or per-token labels (IGNORE where none)
    answer_pos: int = -1  # position whose output scores the label words


def label_index(value, labels: list[str], where: str, key: str) -> int:
    if isinstance(value, (str, int)):  # bool is an int; None, floats, lists and dicts are no label
        name = str(value).lower() if isinstance(value, bool) else str(value)
        if name in labels:
            return labels.index(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
            return value
    raise BadRow(where, f"label {value!r} is not one of {labels} (the labels of {key})")


def task_template(task_cfg, key: str) -> Template | None:
    """The task's template; a classification task without one reads the `text` field."""
    if task_cfg.template:
        template = Template(task_cfg.template, f"{key}.template")
        if not template.fields:
            raise ConfigError(
                f"{key}.template={task_cfg.template!r} uses no field of the rows ({{text}}, "
                "{question}, ...): the model would never see the input"
            )
        return template
    return Template("{text}", f"{key}.template") if task_cfg.type == "classification" else None


def _water_level(lengths: list[int], excess: int) -> int | None:
    """The largest cap >= 1 such that cutting every field down to it removes at least `excess` tokens:
    the longest fields shrink first and end equally long. None when even a cap of 1 is not enough."""
    for cap in range(max(lengths, default=0), 0, -1):
        if sum(max(0, n - cap) for n in lengths) >= excess:
            return cap
    return None


class TaskEncoder:
    def __init__(
        self,
        spec: TaskSpec,
        task_cfg,
        tokenizer,
        kind: str,
        num_soft: int,
        budget: int,
        truncation: str,
        task_id: int,
        key: str,
    ):
        self.spec, self.cfg, self.tok, self.kind = spec, task_cfg, tokenizer, kind
        self.num_soft, self.budget, self.truncation, self.task_id, self.key = (
            num_soft,
            budget,
            truncation,
            task_id,
            key,
        )
        probe = tokenizer("a", add_special_tokens=False)["input_ids"]
        framed = tokenizer("a")["input_ids"]
        at = next(i for i in range(len(framed)) if framed[i : i + len(probe)] == probe)
        self.lead, self.trail = framed[:at], framed[at + len(probe) :]
        if kind == "causal_lm":
            self.trail = []  # the answer (or the output) follows the text directly
        self.template = task_template(task_cfg, key)
        self.check = RowCheck(task_cfg, self.template, key)
        if spec.type == "classification":
            self._check_answer_slot()

    def _check_answer_slot(self):
        if self.spec.uses_head:
            return
        if self.kind == "masked_lm" and not self.template.has("answer"):
            raise ConfigError(f"{self.key}.template needs {{answer}} (the mask) for masked-LM scoring")
        if self.kind == "causal_lm" and self.template.has("answer") and not self.template.ends_with_answer():
            raise ConfigError(f"{self.key}.template: for a causal LM {{answer}} must end the template")

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    @property
    def target_fields(self) -> tuple[str, ...]:
        """The fields that hold the answer: training needs them, prediction must not see them."""
        if self.spec.type == "token_classification":
            return (self.cfg.tags_field,)
        if self.spec.type == "generation":
            return (self.cfg.target_field if self.template else "output",)
        return (self.cfg.label_field,)

    def encode(self, row: dict, where: str, labelled: bool = True) -> Example:
        """One example; `labelled` rows (training, evaluation) must carry their answer. A row that does
        not fit the task raises BadRow."""
        row = self.check(row, where, labelled)
        encode = {
            "classification": self._classification,
            "generation": self._generation,
            "token_classification": self._tokens,
        }[self.spec.type]
        return self._fit(encode, row, where)

    # -- fitting into the budget ---------------------------------------------------------------
    def _fit(self, encode, row: dict, where: str) -> Example:
        ex = encode(row, where)
        if len(ex.input_ids) <= self.budget:
            return ex
        if self.truncation == "error":
            raise DataError(
                f"{where}: {len(ex.input_ids)} tokens > {self.budget} allowed (data.max_length, "
                "virtual tokens included); raise data.max_length or set data.truncation=right|left"
            )
        if self.spec.type == "token_classification":
            raise DataError(
                f"{where}: {len(row[self.cfg.tokens_field])} words do not fit in {self.budget} "
                "tokens (data.max_length); token classification does not truncate"
            )
        row = dict(row)
        names = [f for f in (self.template.fields if self.template else ["input", "instruction"]) if row.get(f)]
        for _ in range(4):  # re-tokenizing cut text can differ by a token or two: check and go again
            fields = {f: self.ids(str(row[f])) for f in names}
            cap = _water_level([len(t) for t in fields.values()], len(ex.input_ids) - self.budget)
            if cap is None:
                break
            for f, toks in fields.items():
                if len(toks) > cap:
                    row[f] = self.tok.decode(toks[:cap] if self.truncation == "right" else toks[-cap:])
            ex = encode(row, where)
            if len(ex.input_ids) <= self.budget:
                return ex
        raise DataError(
            f"{where}: cannot truncate to {self.budget} tokens (data.max_length): what is not an "
            "input field (template text, virtual tokens, the answer) is too long"
        )

    # -- the task types ------------------------------------------------------------------------
    def _slots(self, ids: list[int], soft: list[int]) -> None:
        soft.extend(range(len(ids), len(ids) + self.num_soft))
        ids.extend([self.tok.pad_token_id] * self.num_soft)

    def _render(self, row: dict, where: str, ids: list[int], soft: list[int]) -> int:
        """Append the template's parts; returns the answer position (-1 when none)."""
        answer = -1
        if self.num_soft and not self.template.has("soft"):
            self._slots(ids, soft)
        for kind, text in self.template.runs(row, where):
            if kind == "text":
                ids.extend(self.ids(text))
            elif kind == "soft" and self.num_soft:
                self._slots(ids, soft)
            elif kind == "answer" and self.spec.type == "classification" and not self.spec.uses_head:
                if self.kind == "masked_lm":
                    answer = len(ids)
                    ids.append(self.tok.mask_token_id)
        return answer

    def _classification(self, row: dict, where: str) -> Example:
        ids, soft = list(self.lead), []
        answer = self._render(row, where, ids, soft)
        if self.kind == "causal_lm" and not self.spec.uses_head:
            answer = len(ids) - 1  # the last token predicts the label word
        ids.extend(self.trail)
        label = self.cfg.label_field
        labels = label_index(row[label], self.spec.labels, where, self.key) if label in row else None
        return Example(ids, self.task_id, soft, labels, answer)

    def _generation(self, row: dict, where: str) -> Example:
        ids, soft = [], []
        if self.template:
            ids.extend(self.lead)
            self._render(row, where, ids, soft)
            target = row.get(self.cfg.target_field)
        else:
            prompt = self._instruction_prompt(row["instruction"], row.get("input") or "")
            lead = len(self.lead) if prompt[: len(self.lead)] == self.lead else 0
            ids.extend(prompt[:lead])
            self._slots(ids, soft)  # virtual tokens after BOS, as everywhere
            ids.extend(prompt[lead:])
            target = row.get("output")
        if target is None:  # prediction: the prompt alone
            return Example(ids, self.task_id, soft, None)
        out = self.ids(target) + [self.tok.eos_token_id]
        return Example(ids + out, self.task_id, soft, [IGNORE] * len(ids) + out)

    def _use_chat(self) -> bool:
        has = bool(getattr(self.tok, "chat_template", None))
        if self.cfg.chat_template == "always" and not has:
            raise ConfigError(f"{self.key}.chat_template=always but the tokenizer has no chat template")
        return self.cfg.chat_template == "always" or (self.cfg.chat_template == "auto" and has)

    def _instruction_prompt(self, instruction: str, inp: str) -> list[int]:
        if self._use_chat():
            user = instruction + (f"\n\n{inp}" if inp else "")
            out = self.tok.apply_chat_template(
                [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True
            )
            return list(out["input_ids"] if hasattr(out, "keys") else out)
        text = f"### Instruction:\n{instruction}\n\n" + (f"### Input:\n{inp}\n\n" if inp else "") + "### Response:\n"
        return list(self.lead) + self.ids(text)

    def _tokens(self, row: dict, where: str) -> Example:
        """Labels on each word's first sub-token; rows without tags (prediction) mark those positions with 0,
        so that prediction knows where each word starts."""
        words, tags = row[self.cfg.tokens_field], row.get(self.cfg.tags_field)  # checked: str words, as many tags
        enc = self.tok(words, is_split_into_words=True)
        ids, labels, seen = list(enc["input_ids"]), [], set()
        for w in enc.word_ids():
            if w is None or w in seen:
                labels.append(IGNORE)
            else:
                labels.append(label_index(tags[w], self.spec.labels, where, self.key) if tags is not None else 0)
            seen.add(w)
        at = len(self.lead)
        soft = list(range(at, at + self.num_soft))
        ids[at:at] = [self.tok.pad_token_id] * self.num_soft
        labels[at:at] = [IGNORE] * self.num_soft
        return Example(ids, self.task_id, soft, labels)
