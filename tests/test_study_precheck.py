"""A study is checked cell by cell as each cell's own `ptune train` checks itself before it loads a weight
(ptune_dist/study/precheck.py: train/session.py prepare), in the dry run and before anything is written or
submitted; cells that share those checks are checked once. No weights load here."""

import pytest

from conftest import SMOL
from ptune_dist.cli import main

GRID = [
    f"study.models=[{SMOL}]",
    "study.seeds=[0]",
    "study.init=random",
    "study.inits=[random]",
    "tasks=[{name: support, preset: support}]",
    "data.max_length=64",
    "train.steps=1",
]


@pytest.mark.parametrize(
    "method, fragment",
    [
        ("p_tuning_v2", "data.max_length=64 leaves no room after 100 virtual tokens"),  # a deep prefix takes positions
        ("prompt_tuning", "row 0: 115 tokens > 64 allowed (data.max_length, virtual tokens included)"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_prompt_longer_than_max_length_is_refused_before_anything_is_written(
    tmp_path, capsys, method, fragment, dry_run
):
    folder = tmp_path / "study"
    argv = [
        "study",
        *GRID,
        f"study.methods=[{method}]",
        "study.prompt_length=100",
        "study.prompt_lengths=[100]",
        f"output_dir={folder}",
    ]
    assert main(argv + ["--dry-run"] * dry_run) == 2
    err = capsys.readouterr().err
    assert f"study cell smollm2-135m-instruct__{method}__L100-random__support__s0: " in err and fragment in err
    assert "Traceback" not in err and not folder.exists()


def test_cells_that_share_their_checks_are_checked_once(tmp_path, monkeypatch, capsys):
    import ptune_dist.train.session as session

    real, seen = session.prepare, []
    monkeypatch.setattr(
        session,
        "prepare",
        lambda cfg: seen.append((cfg.method.name, cfg.method.num_virtual_tokens, cfg.train.seed)) or real(cfg),
    )
    argv = [
        "study",
        *GRID,
        "study.methods=[prompt_design, prompt_tuning]",
        "study.seeds=[0, 1, 2]",
        "study.prompt_length=4",
        "study.prompt_lengths=[4, 8]",
        f"output_dir={tmp_path / 'study'}",
        "--dry-run",
    ]
    assert main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 9  # 3 seeds x (prompt design, L4, L8)
    assert sorted((m, n) for m, n, _ in seen) == [("prompt_design", 20), ("prompt_tuning", 4), ("prompt_tuning", 8)]


def test_a_model_this_machine_cannot_read_is_left_to_its_jobs_on_slurm_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unknown = "some-org/Unknown-7B"
    argv = [
        "study",
        *GRID,
        f"study.models=[{unknown}, {SMOL}]",
        "study.methods=[prompt_tuning]",
        "study.prompt_length=4",
        "study.prompt_lengths=[4]",
        f"output_dir={tmp_path / 'study'}",
        "--dry-run",
    ]
    assert main([*argv, "launch.backend=slurm"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"model.name_or_path={unknown!r}") == 1 and "checked when their jobs start" in err
    assert main(argv) == 2  # the local queue runs the cells here
    err = capsys.readouterr().err
    assert f"study cell Unknown-7B__prompt_tuning__L4-random__support__s0: model.name_or_path={unknown!r}" in err
