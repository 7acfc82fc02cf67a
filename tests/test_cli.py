"""The `ptune` command end to end on SmolLM2: train -> metrics, checkpoints, final; eval; predict; export.
Bad inputs: each gives one clear error line (exit 2) that names the problem, and no saved file changes."""

import hashlib
import json
from pathlib import Path

import pytest

from conftest import FIXTURES, MINI, read_jsonl, write_jsonl
from ptune_dist.cli import main

SMALL = [
    "method.num_virtual_tokens=4",
    "tasks.0.name=support",
    "tasks.0.preset=support",
    "data.max_train_examples=16",
    "data.max_eval_examples=16",
    "data.batch_size=4",
    "train.steps=4",
    "train.save_every=2",
    "train.log_every=1",
    "train.eval_every=2",
    "train.progress_bar=false",
]


def quickstart_yaml() -> str:
    return str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", quickstart_yaml(), f"output_dir={out}", *SMALL]) == 0
    return out


def test_train_writes_config_metrics_checkpoints_and_final(run):
    assert (run / "config.yaml").read_text().count("preset: support") == 1
    records = read_jsonl(run / "metrics.jsonl")
    train = [r for r in records if "loss" in r and "split" not in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert r["loss"] > 0 and r["lr"] > 0 and r["tokens_per_s"] > 0
    evals = [r for r in records if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all(0 <= r["accuracy"] <= 1 for r in evals)
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"step-2", "step-4"}
    assert {p.name for p in (run / "final").iterdir()} == {
        "config.yaml",
        "manifest.json",
        "state.json",
        "trainable.safetensors",
    }
    results = json.loads((run / "results.json").read_text())
    assert results["final"]["support"]["examples"] == 16
    # which device ran, in the log and the results (no GPU here: train.device=auto is the CPU)
    ran = next(r for r in records if r.get("event") == "device")
    assert (ran["device"], ran["backend"], ran["per_rank"]) == ("cpu", "gloo", ["cpu"])
    assert results["device"]["device"] == "cpu"
    assert "peak_gpu_bytes_per_rank" not in next(r for r in records if r.get("event") == "memory")
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())


def test_eval_prints_the_metrics(run, capsys):
    assert main(["eval", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    final = json.loads((run / "results.json").read_text())["final"]
    assert metrics["support"]["accuracy"] == final["support"]["accuracy"]
    assert main(["eval", str(run / "checkpoints" / "step-2"), "data.max_eval_examples=4"]) == 0
    assert json.loads(capsys.readouterr().out)["support"]["examples"] == 4


def test_predict_classification(run, tmp_path, capsys):
    f = write_jsonl(tmp_path / "in.jsonl", [{"text": "My parcel never came."}, {"text": "Refund me, I paid twice."}])
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run), "--input", str(f), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 2
    for r in rows:
        assert r["label"] in r["scores"] and abs(sum(r["scores"].values()) - 1) < 1e-4


def test_export_to_peft(run, tmp_path, capsys):
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "adapter")]) == 0
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (meta["peft_type"], meta["num_virtual_tokens"]) == ("PROMPT_TUNING", 4)


def test_generation_train_and_predict(tmp_path):
    out = tmp_path / "gen"
    args = [
        "train",
        quickstart_yaml(),
        f"output_dir={out}",
        "tasks.0.name=qa",
        "tasks.0.preset=",
        "tasks.0.type=generation",
        f"tasks.0.train={FIXTURES}/instructions.jsonl",
        f"tasks.0.eval={FIXTURES}/instructions.jsonl",
        "tasks.0.max_new_tokens=8",
        "method.num_virtual_tokens=4",
        "data.batch_size=4",
        "train.steps=6",
        "train.lr=0.05",
        "train.log_every=1",
        "train.eval_at_start=true",
        "train.progress_bar=false",
    ]
    assert main(args) == 0
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("split") == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"]  # the output tokens got likelier
    f = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"instruction": "Give the capital of the country.", "input": "Peru"},
            {"instruction": "Name a primary colour."},
        ],
    )
    assert main(["predict", str(out), "--input", str(f), "--output", str(tmp_path / "o.jsonl")]) == 0
    rows = read_jsonl(tmp_path / "o.jsonl")
    assert [r["task"] for r in rows] == ["qa", "qa"] and all(isinstance(r["output"], str) and r["output"] for r in rows)


def test_token_classification_predicts_word_tags_with_either_padding(tmp_path):
    out = tmp_path / "ner"
    assert (
        main(
            [
                "train",
                quickstart_yaml(),
                f"output_dir={out}",
                f"model.name_or_path={MINI}",
                "method.name=p_tuning_v2",
                "method.init=random",
                "tasks.0.name=ner",
                "tasks.0.preset=",
                "tasks.0.type=token_classification",
                "tasks.0.scoring=head",
                f"tasks.0.train={FIXTURES}/ner.jsonl",
                f"tasks.0.eval={FIXTURES}/ner.jsonl",
                "data.batch_size=2",
                "train.steps=2",
                "train.progress_bar=false",
                "train.eval_baseline=false",
            ]
        )
        == 0
    )
    rows = [
        {"tokens": ["Alice", "visited", "Rome"]},
        {"tokens": ["Bob", "Smith", "flew", "to", "New", "York", "today"]},
    ]
    f = write_jsonl(tmp_path / "in.jsonl", rows)
    got = {}
    for side in ("right", "left"):
        assert (
            main(
                [
                    "predict",
                    str(out),
                    "--input",
                    str(f),
                    "--output",
                    str(tmp_path / f"{side}.jsonl"),
                    f"data.padding_side={side}",
                ]
            )
            == 0
        )
        got[side] = [r["tags"] for r in read_jsonl(tmp_path / f"{side}.jsonl")]
    assert [len(t) for t in got["right"]] == [3, 7]
    assert got["left"] == got["right"]


def tree_hash(folder: Path) -> str:
    """Every file of a run but its lock, which each `ptune train` that gets past the config takes."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != ".ptune-lock":
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def bad_inputs(run: Path, tmp: Path):
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    broken = tmp / "broken.jsonl"
    broken.write_text('{"text": "ok", "label": "billing"}\n{"text": oops}\n')
    outside = write_jsonl(tmp / "outside.jsonl", [{"text": "a", "label": "billing"}, {"text": "b", "label": "pizza"}])
    garbage = tmp / "garbage"
    garbage.mkdir()
    (garbage / "trainable.safetensors").write_bytes(b"\x00" * 64)
    yaml_bad = tmp / "bad.yaml"
    yaml_bad.write_text("train:\n  steps: [1\n")
    train = ["train", quickstart_yaml(), f"output_dir={run}", *SMALL]
    return [
        (train + ["train.stepz=3"], "train.stepz is unknown"),
        (train + ["train.steps=many"], "train.steps"),
        (train + ["method.name=lora"], "method.name='lora' is not allowed"),
        (
            train + ["tasks.0.train=/nonexistent/train.jsonl"],
            "tasks.0.train: data file /nonexistent/train.jsonl not found",
        ),
        (train + [f"tasks.0.train={empty}"], "the dataset is empty"),
        (train + [f"tasks.0.train={broken}"], f"cannot read {broken}"),
        (train + [f"tasks.0.train={outside}"], "line 2: label 'pizza' is not one of"),
        (train + ["data.max_length=8"], "tokens > 8 allowed"),
        (train + ["tasks.0.template={message}{answer}"], "has no field 'message' used by tasks.0.template"),
        (train + [f"model.name_or_path={MINI}"], "tasks.0.scoring=verbalizer needs an LM head"),
        (train + ["model.name_or_path=/nonexistent/model"], "model.name_or_path='/nonexistent/model': no such folder"),
        (train + ["method.name=prefix_tuning"], "does not fit this model"),  # resume of another method's run
        (["eval", str(garbage)], "manifest.json"),
        (["eval", str(tmp / "nothing-here")], "neither a checkpoint nor a run folder"),
        (["train", str(yaml_bad), f"output_dir={run}"], "not valid YAML"),
        (["predict", str(run), "--input", str(tmp / "missing.jsonl")], "--input"),
        (["export", str(run), "--out", str(tmp / "x"), "--task", "nope"], "--task"),
    ]


def test_bad_inputs_fail_clearly_and_corrupt_nothing(run, tmp_path, capsys):
    before = tree_hash(run)
    cases = bad_inputs(run, tmp_path)
    assert len(cases) >= 10
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv[-1], err)
        assert message in err, (message, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert tree_hash(run) == before
