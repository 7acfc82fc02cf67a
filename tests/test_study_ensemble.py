"""Prompt ensembles (study/ensemble.py; the scoring and the vote: inference_ensemble.py): the vote, the
report's table read back, and end to end on the real MiniLM: three seeds' prompts (and heads) in one batch on one
base give each member exactly the score its own
cell measured alone, and the ensemble's score is the majority vote of their predictions."""

import json
import os
import subprocess
import sys

import pytest

from conftest import MINI
from ptune_dist.inference_ensemble import vote
from ptune_dist.study.ensemble_table import COLUMNS, ensemble_section, ensemble_tables
from ptune_dist.train.evaluate import class_metrics


def test_the_vote_is_the_majority_and_ties_go_to_the_summed_scores_then_label_order():
    assert vote([1, 1, 0], None) == 1
    assert vote([2, 0, 2, 0, 2], [None] * 5) == 2
    assert vote([0, 1], [[0.1, 0.9], [0.6, 0.4]]) == 1  # tie: class 1 has 1.3 against 0.7
    assert vote([0, 1], [[0.9, 0.1], [0.4, 0.6]]) == 0
    assert vote([1, 0], None) == 0  # tie without scores: the first class in label order
    assert vote([1, 0, 2], [None, None, None]) == 0


def record(model, task, scores, ens, metric="accuracy"):
    return {
        "model": model,
        "task": task,
        "method": "prompt_tuning",
        "prompt_length": 20,
        "init": "labels",
        "member_scores": scores,
        "score": ens,
        "metric": metric,
    }


def test_the_ensemble_table_has_a_row_per_model_by_size_with_the_members_and_the_vote():
    records = [
        record("big", "rte", [0.5, 0.7, 0.6], 0.75),
        record("small", "rte", [0.4, 0.5, 0.6], 0.55),
        record("small", "cb", [0.3, 0.3, 0.3], 0.3, "accuracy_macro_f1"),
    ]
    tables = dict(ensemble_tables(records, {"small": 135_000_000, "big": 1_700_000_000}))
    header, rows = tables["rte (accuracy)"]
    assert header == COLUMNS
    assert rows == [
        ["small (135M)", "3", "0.500 ± 0.100", "0.600", "0.550"],
        ["big (1.7B)", "3", "0.600 ± 0.100", "0.700", "0.750"],
    ]
    assert tables["cb (accuracy_macro_f1)"][1] == [["small (135M)", "3", "0.300 ± 0.000", "0.300", "0.300"]]
    text = "\n".join(ensemble_section(records, {}))
    assert "### rte (accuracy)" in text and "| small | 3 | 0.500 ± 0.100 | 0.600 | 0.550 |" in text
    assert "Left out: no ensemble yet" in "\n".join(ensemble_section([], {}))


STUDY = [
    f"study.models=[{MINI}]",
    "study.methods=[prompt_tuning]",
    "study.prompt_length=4",
    "study.init=random",
    "study.prompt_lengths=[4]",
    "study.inits=[random]",
    "study.seeds=[0, 1, 2]",
    "tasks=[{name: support, preset: support, scoring: head, pooling: mean}]",
    "data.max_length=64",
    "data.max_train_examples=16",
    "data.max_eval_examples=24",
    "data.batch_size=4",
    "data.eval_batch_size=7",
    "train.steps=3",
    "train.lr=0.3",
    "train.eval_baseline=false",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "method.init=random",
]


@pytest.mark.slow
def test_a_study_ensembles_its_seeds_prompts_and_each_member_scores_as_alone(tmp_path):
    study = tmp_path / "study"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    run = subprocess.run(
        [sys.executable, "-m", "ptune_dist.cli", "study", *STUDY, f"output_dir={study}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = (study / "ensembles").glob("*.json")
    rec = json.loads(path.read_text())
    cells = json.loads((study / "study.json").read_text())["cells"]
    assert rec["members"] == [c["id"] for c in cells] and rec["seeds"] == [0, 1, 2]
    for cell_id, member_score, preds in zip(rec["members"], rec["member_scores"], rec["member_preds"]):
        alone = json.loads((study / "cells" / cell_id / "results.json").read_text())["final"]["support"]
        assert member_score == alone["accuracy"]  # its prompt and head in its own slot of the shared batch
        assert class_metrics(rec["gold"], preds, 4)["accuracy"] == member_score
    assert len(rec["gold"]) == alone["examples"] == 24
    for voted, picks in zip(rec["voted"], zip(*rec["member_preds"])):
        top = max(set(picks), key=picks.count)
        assert voted == top if picks.count(top) >= 2 else voted in picks  # a three-way tie falls to the scores
    assert rec["accuracy"] == class_metrics(rec["gold"], rec["voted"], 4)["accuracy"] == rec["score"]
    assert len({tuple(p) for p in rec["member_preds"]}) > 1, "the seeds' prompts should disagree somewhere"
    report = (study / "report" / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith(f"| {MINI}"))
    cells_of = [c.strip() for c in line.strip("|").split("|")]
    assert cells_of[1] == "3" and cells_of[-1] == f"{rec['score']:.3f}" and cells_of[-2] == f"{rec['member_best']:.3f}"
    again = subprocess.run(
        [sys.executable, "-m", "ptune_dist.cli", "study", "ensemble", str(study)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and not any(x.endswith(".json") for x in again.stdout.splitlines()), again.stdout
    # the members are unchanged: nothing is recomputed
    # the same ensemble through `ptune eval RUN... --ensemble` (inference_ensemble.py): the same vote and metrics
    runs = [str(study / "cells" / c) for c in rec["members"]]
    plain = subprocess.run(
        [sys.executable, "-m", "ptune_dist.cli", "eval", *runs, "--ensemble"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    out = json.loads(plain.stdout)
    assert out["ensemble"]["accuracy"] == rec["accuracy"] and len(out["members"]) == 3
    assert [m["accuracy"] for m in out["member_metrics"]] == rec["member_scores"]
