"""The study's grid (ptune_dist/study/cells.py): the three comparisons share their cells, each method runs at the
prompt length and init it takes, ids name the settings, and a bad study section is refused by its key."""

import re

import pytest

from ptune_dist.config import load_config
from ptune_dist.errors import ConfigError
from ptune_dist.study.cells import expand

MODELS = "study.models=[embedded:all-minilm-l6-v2, embedded:smollm2-135m-instruct]"


def cells(*overrides):
    return expand(load_config([], [MODELS, *overrides]))


def test_the_comparisons_share_cells_and_each_run_is_made_once():
    got = cells("study.seeds=[0, 1]")
    per = 6 + 4 + 2  # main: every method (6); length: 5 lengths, one of them main's; init: 3 inits, one of them main's
    assert len(got) == 2 * 2 * per  # models x seeds (one task)
    assert len({c.id for c, _ in got}) == len(got)
    shared = [
        parts for c, parts in got if c.method == "prompt_tuning" and c.prompt_length == 100 and c.init == "labels"
    ]
    assert shared and all(parts == ("main", "length", "init") for parts in shared)
    lengths = sorted({c.prompt_length for c, parts in got if "length" in parts})
    assert lengths == [1, 5, 20, 100, 150]
    assert sorted({c.init for c, parts in got if "init" in parts}) == ["labels", "random", "vocab"]


def test_methods_run_at_what_they_take():
    by_method = {c.method: c for c, parts in cells("study.seeds=[0]") if "main" in parts}
    assert (by_method["prompt_design"].prompt_length, by_method["prompt_design"].init) == (0, "")
    assert (by_method["full_finetune"].prompt_length, by_method["full_finetune"].init) == (0, "")
    assert by_method["prompt_tuning"].init == "labels"
    assert by_method["p_tuning_v2"].init == "random"  # its prefix without projection takes only random
    assert "train.steps=0" in by_method["prompt_design"].overrides()
    assert "method.init=labels" in by_method["prompt_tuning"].overrides()
    assert not any(o.startswith("method.init") for o in by_method["full_finetune"].overrides())


def test_a_generation_task_runs_init_labels_at_random():
    fixtures = __import__("pathlib").Path(__file__).parent / "fixtures"
    got = cells(
        "study.seeds=[0]",
        "study.methods=[prompt_tuning]",
        "study.inits=[labels]",
        "study.prompt_lengths=[4]",
        "study.prompt_length=4",
        f"tasks=[{{name: gen, type: generation, train: {fixtures}/instructions.jsonl}}]",
    )
    assert [c.id for c, _ in got] == [
        "all-minilm-l6-v2__prompt_tuning__L4-random__gen__s0",
        "smollm2-135m-instruct__prompt_tuning__L4-random__gen__s0",
    ]  # no labels to start from


def test_ids_name_the_settings_and_stay_when_the_study_grows():
    small = {c.id for c, _ in cells("study.seeds=[0]")}
    grown = {c.id for c, _ in cells("study.seeds=[0, 1]", "study.prompt_lengths=[1, 5, 20, 100, 150, 300]")}
    assert small < grown
    assert "smollm2-135m-instruct__prompt_tuning__L20-labels__" in " ".join(sorted(grown))


@pytest.mark.parametrize(
    "override, message",
    [
        ("study.models=[]", "study.models is empty"),
        ("study.methods=[prompt_tuning, lora]", "study.methods: 'lora' is not one of"),
        ("study.inits=[random, zeros]", "study.inits: 'zeros' is not one of"),
        ("study.seeds=[0, 0]", "study.seeds: 0 given twice"),
        ("study.models=[a/m, b/m]", "two models share the folder name"),
        ("study.method_overrides={lora: [train.lr=1]}", "study.method_overrides.lora: not a method"),
        ("study.model_overrides={'embedded:x': [train.lr=1]}", "'embedded:x' is not one of study.models"),
        ("study.model_overrides={'embedded:all-minilm-l6-v2|lora': [train.lr=1]}", "nor 'MODEL|METHOD'"),
    ],
)
def test_a_bad_study_section_is_refused_by_its_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(load_config([], [MODELS, override]))


def test_overrides_apply_by_method_then_model_then_model_and_method(tmp_path):
    from ptune_dist.study.cell_configs import resolve_study as prepare

    big = "embedded:smollm2-135m-instruct"
    runnable = [
        "tasks=[{name: support, preset: support, scoring: head, pooling: mean}]",  # each cell is checked
        "study.prompt_lengths=[100]",
    ]  # as its run would check it: one task that every model can run
    _, _, cells, configs = prepare(
        [],
        [
            MODELS,
            *runnable,
            "study.seeds=[0]",
            "study.methods=[prompt_tuning, full_finetune]",
            "study.method_overrides={full_finetune: [train.lr=0.001, train.steps=7]}",
            f"study.model_overrides={{'{big}': [train.lr=0.5], '{big}|full_finetune': [train.lr=0.002]}}",
            f"output_dir={tmp_path}",
        ],
        write=False,
    )
    lr = {(c["model"], c["method"], c["prompt_length"]): cfg.train.lr for c, cfg in zip(cells, configs)}
    assert lr[(big, "full_finetune", 0)] == 0.002 and lr[(big, "prompt_tuning", 100)] == 0.5
    assert lr[("embedded:all-minilm-l6-v2", "full_finetune", 0)] == 0.001
    steps = {c["method"]: cfg.train.steps for c, cfg in zip(cells, configs)}
    assert steps["full_finetune"] == 7
    assert all(cfg.tasks == configs[0].tasks and cfg.study.models == [] for cfg in configs)
    assert not tmp_path.joinpath("study.json").exists()  # write=False: checked, nothing written
