"""The study's cells: the three comparisons of StudyConfig (main, length, init) over models, tasks and seeds,
one cell per distinct run, with the comparisons it belongs to.

A cell is what one `ptune train` runs: one model, one method at one prompt length and init, one task, one seed.
The comparisons share cells (the main setting of the ablation method is in all three), so a run is never made
twice. A method's prompt length and init are what it takes: the baselines (depth none: prompt design, full
model tuning) take neither, and a method whose rules refuse the study's init (check_config), or a task that
cannot give it (init=labels on a generation task), runs at init=random, which its cell id and row say.

A cell's id names its settings (model, method, length, init, task, seed), so it stays the same when the
study grows: a rerun with more seeds or sizes finds the cells it already has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ptune_dist.config.schema import MethodConfig, RunConfig, StudyConfig
from ptune_dist.errors import ConfigError, PtuneError
from ptune_dist.methods import METHODS, method_class
from ptune_dist.methods.config import INITS, NEEDS_CLASS_LABELS, RANDOM

PARTS = ("main", "length", "init")


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    prompt_length: int  # 0: the method has no prompt
    init: str  # "": the method has no init
    task: int  # index into the config's tasks
    task_name: str
    seed: int

    @property
    def id(self) -> str:
        prompt = f"L{self.prompt_length}-{self.init}" if self.prompt_length else "noprompt"
        return "__".join((slug(self.model), self.method, prompt, slug(self.task_name), f"s{self.seed}"))

    def overrides(self) -> list[str]:
        """The key=value settings that make the study's base config this cell (the task is set apart)."""
        out = [f"model.name_or_path={self.model}", f"method.name={self.method}", f"train.seed={self.seed}"]
        if self.prompt_length:
            out += [f"method.num_virtual_tokens={self.prompt_length}", f"method.init={self.init}"]
        if method_class(self.method).trains_nothing():
            out.append("train.steps=0")  # nothing trains: the hand-written prompt is scored as it is
        return out


def slug(text: str) -> str:
    """A name safe in a folder name: the last path component, other characters as '-'."""
    last = re.split(r"[/:\\]", text.rstrip("/"))[-1] or text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-") or "x"


def check_study(s: StudyConfig) -> None:
    """What `ptune study` needs of the study section, each problem naming its key."""
    if not s.models:
        raise ConfigError(
            "study.models is empty: give the model of each size, e.g. study.models=[embedded:"
            "all-minilm-l6-v2, embedded:smollm2-135m-instruct]"
        )
    for key, values, allowed in (("study.methods", s.methods, METHODS), ("study.inits", s.inits, INITS)):
        if not values:
            raise ConfigError(f"{key} is empty: give at least one")
        wrong = [v for v in values if v not in allowed]
        if wrong:
            raise ConfigError(f"{key}: {wrong[0]!r} is not one of {list(allowed)}")
    for key, values in (
        ("study.models", s.models),
        ("study.methods", s.methods),
        ("study.seeds", s.seeds),
        ("study.prompt_lengths", s.prompt_lengths),
        ("study.inits", s.inits),
    ):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{key}: {', '.join(twice)} given twice; give each once")
    if not s.seeds or not s.prompt_lengths:
        raise ConfigError("study.seeds and study.prompt_lengths need at least one value each")
    ids = {slug(m): m for m in s.models}
    if len(ids) != len(s.models):
        raise ConfigError(
            f"study.models: two models share the folder name {sorted(ids)}; their cells would "
            "collide (use distinct names or folders)"
        )
    unknown = sorted(set(s.method_overrides) - set(METHODS))
    if unknown:
        raise ConfigError(f"study.method_overrides.{unknown[0]}: not a method ({', '.join(METHODS)})")
    for key in s.model_overrides:
        model, _, method = key.partition("|")
        if model not in s.models or (method and method not in METHODS):
            raise ConfigError(
                f"study.model_overrides: {key!r} is not one of study.models, nor 'MODEL|METHOD' with "
                f"a method of {list(METHODS)}"
            )


def method_setting(
    method: str, length: int, init: str, base: MethodConfig, task_type: str = "classification"
) -> tuple[int, str]:
    """(prompt length, init) the method runs at: (0, "") without a prompt; init=random where its rules refuse init,
    or where the task cannot give it (labels: a generation task has no label names nor words)."""
    cls = method_class(method)
    if not cls.placement.learned:
        return 0, ""
    if init in NEEDS_CLASS_LABELS and task_type == "generation":
        return length, RANDOM
    try:
        cls.check_config(cls.section(base, num_virtual_tokens=length, init=init))
    except ConfigError:
        return length, RANDOM
    return length, init


def expand(cfg: RunConfig) -> list[tuple[Cell, tuple[str, ...]]]:
    """Every cell of the study with the comparisons it belongs to, in a stable order (main first)."""
    s = cfg.study
    check_study(s)
    wanted: dict[Cell, list[str]] = {}
    for model in s.models:
        for t, task in enumerate(cfg.tasks):
            name = task.name or f"task{t}"
            for seed in s.seeds:

                def add(method, length, init, part):
                    length, init = method_setting(method, length, init, cfg.method, task.type)
                    cell = Cell(model, method, length, init, t, name, seed)
                    parts = wanted.setdefault(cell, [])
                    if part not in parts:
                        parts.append(part)

                for method in s.methods:
                    add(method, s.prompt_length, s.init, "main")
                for length in s.prompt_lengths:
                    add(s.ablation_method, length, s.init, "length")
                for init in s.inits:
                    add(s.ablation_method, s.prompt_length, init, "init")
    cells = list(wanted.items())
    ids = [c.id for c, _ in cells]
    if len(set(ids)) != len(ids):  # task names that slug alike
        raise PtuneError("two study cells share an id; give the tasks distinct names (tasks.N.name)")
    return [(c, tuple(p)) for c, p in cells]
