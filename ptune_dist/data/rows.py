"""What a row must hold for its task, checked before it is encoded, and where each row came from.

A row fits its task when
  - every field the task reads is there: the template's `{fields}` (a classification task without a
    template reads `{text}`), instruction rows' `instruction` (`input` is optional: missing, null or ""
    mean none), token rows' tokens_field; and, where the split is labelled (train, eval; not predict),
    the answer: label_field, tags_field, `output` or target_field;
  - text is text: a str is used as it is; an int or a float (a number column, an id) becomes the text
    Python writes for it (3, 2.5); null, NaN, true/false, a list or an object is an error, since
    str() would train on "None", "True" or a dict's repr;
  - a label is a label name (str), an index into the label list (int) or a bool (true/false name the
    labels "true"/"false"), and one of the task's labels;
  - token rows: tokens a non-empty list of words (text as above), tags a list of labels as long.

A row that does not fit raises BadRow, a DataError naming where the row is and the field: the file
and 1-based line for JSONL and CSV (the header is line 1), "row N (line L)" for JSON arrays (the
0-based index, then the line the object starts on), "row N" (0-based) for Parquet, the hub and
built-ins. With data.on_bad_row=skip the caller leaves it out and counts it.
"""

from __future__ import annotations

import math

from ptune_dist.errors import DataError


class BadRow(DataError):
    """A row that does not fit its task (data.on_bad_row=skip may leave it out); other DataErrors stop."""

    def __init__(self, where: str, reason: str, sep: str = ": "):
        self.where, self.reason, self.sep = where, reason, sep
        super().__init__(f"{where}{sep}{reason}")

    def short(self, prefix: str) -> str:
        """The message without `prefix` (the source's name, said once already)."""
        where = self.where[len(prefix) :].lstrip() if self.where.startswith(prefix) else self.where
        return f"{where}{self.sep}{self.reason}"


class Rows(list):
    """Rows of one source; `name` says which (`tasks.0.train='d.jsonl'`, `--input d.jsonl`) and `lines`,
    when known, the 1-based line in the file that each row starts on; `indexed` rows (a JSON array's) are
    named by their index first, since several may start on one line."""

    def __init__(self, rows, name: str, lines: list[int] | None = None, indexed: bool = False):
        super().__init__(rows)
        self.name, self.lines, self.indexed = name, lines, indexed

    def where(self, i: int) -> str:
        if not self.lines:
            return f"{self.name} row {i}"
        return f"{self.name} row {i} (line {self.lines[i]})" if self.indexed else f"{self.name} line {self.lines[i]}"

    def head(self, limit: int) -> Rows:
        return Rows(self[:limit], self.name, self.lines[:limit] if self.lines else None, self.indexed)


def describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a bool ({str(value).lower()})"
    if isinstance(value, float):
        return str(value)
    kind = {dict: "an object", list: "a list", tuple: "a list"}.get(type(value), f"a {type(value).__name__}")
    shown = repr(value)
    return f"{kind} ({shown[:40] + '...' if len(shown) > 40 else shown})"


def is_text(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def text(row: dict, name: str, where: str, user: str) -> str:
    """Field `name` of `row` as text; `user` says what reads it (a config key)."""
    if name not in row:
        raise BadRow(where, f"has no field {name!r} used by {user} (fields: {sorted(row)})", sep=" ")
    value = row[name]
    if not is_text(value):
        raise BadRow(where, f"field {name!r} holds {describe(value)}, not text (used by {user})")
    return value if isinstance(value, str) else str(value)


def is_label(value) -> bool:
    return isinstance(value, (str, int))  # bool is an int


class RowCheck:
    """The check of one task's rows; `template` is the task's (None: generation from instruction rows,
    token classification)."""

    def __init__(self, task, template, key: str):
        self.task, self.template, self.key = task, template, key

    def __call__(self, row: dict, where: str, labelled: bool = True) -> dict:
        """The row with its text fields as str; raises BadRow when it does not fit."""
        t, out = self.task, dict(row)
        if t.type == "token_classification":
            self._tokens(row, out, where, labelled)
            return out
        for name in self.template.fields if self.template else ["instruction"]:
            out[name] = text(row, name, where, f"{self.key}.template" if self.template else self.key)
        if t.type == "generation" and not self.template and row.get("input") not in (None, ""):
            out["input"] = text(row, "input", where, self.key)
        answer = (t.target_field if self.template else "output") if t.type == "generation" else t.label_field
        if labelled and answer not in row:
            raise BadRow(
                where,
                f"has no field {answer!r} (the answer, which training and evaluation need; "
                f"{self.key} names it; fields: {sorted(row)})",
                sep=" ",
            )
        if row.get(answer) is None:
            if labelled:
                raise BadRow(where, f"field {answer!r} holds null (the answer, which training and evaluation need)")
            out.pop(answer, None)  # prediction: no answer
        elif t.type == "generation":
            out[answer] = text(row, answer, where, self.key)
        elif not is_label(row[answer]):
            raise BadRow(where, f"field {answer!r} holds {describe(row[answer])}, not a label name or index")
        return out

    def _tokens(self, row: dict, out: dict, where: str, labelled: bool) -> None:
        words_f, tags_f = self.task.tokens_field, self.task.tags_field
        if words_f not in row:
            raise BadRow(where, f"has no field {words_f!r} ({self.key}.tokens_field; fields: {sorted(row)})", sep=" ")
        words = row[words_f]
        if not isinstance(words, list) or not words:
            raise BadRow(where, f"field {words_f!r} holds {describe(words)}, not a non-empty list of words")
        bad = next((i for i, w in enumerate(words) if not is_text(w)), None)
        if bad is not None:
            raise BadRow(where, f"field {words_f!r}: word {bad} holds {describe(words[bad])}, not text")
        out[words_f] = [w if isinstance(w, str) else str(w) for w in words]
        if labelled and row.get(tags_f) is None:
            raise BadRow(
                where,
                f"has no field {tags_f!r} (the answer, which training and evaluation need; "
                f"{self.key}.tags_field names it; fields: {sorted(row)})",
                sep=" ",
            )
        tags = row.get(tags_f)
        if tags is None:
            out.pop(tags_f, None)
            return
        if not isinstance(tags, list):
            raise BadRow(where, f"field {tags_f!r} holds {describe(tags)}, not a list of tags")
        if len(tags) != len(words):
            raise BadRow(where, f"{len(words)} tokens ({words_f!r}) but {len(tags)} tags ({tags_f!r})")
        bad = next((i for i, g in enumerate(tags) if not is_label(g)), None)
        if bad is not None:
            raise BadRow(where, f"field {tags_f!r}: tag {bad} holds {describe(tags[bad])}, not a label name or index")
