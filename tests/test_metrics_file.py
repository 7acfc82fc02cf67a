"""metrics.jsonl: append-only across resumes, resume marked, one history when read, torn lines tolerated."""

import json

import pytest

from ptune_dist.train.logger import MetricsLogger
from ptune_dist.train.metrics_file import MetricsFileError, read_metrics


def lines(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def train_steps(history) -> list:
    return [r["step"] for r in history if "loss" in r]


def log_steps(out, start, steps):
    log = MetricsLogger(out, True, 10, start, progress=False, tensorboard=False)
    for step in steps:
        log.train({"step": step, "loss": 1.0 / step, "lr": 0.1, "tokens_per_s": 1.0})
        if step == 4:
            log.eval(step, {"support": {"accuracy": 0.5}})
    log.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(lines({"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}) + '{"step": 3, "lo')
    assert train_steps(read_metrics(f)) == [1, 2]


def test_a_bad_line_that_is_not_torn_names_file_and_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(lines({"step": 1, "loss": 1.0}) + "garbage\n" + lines({"step": 2, "loss": 0.9}))
    with pytest.raises(MetricsFileError, match=rf"{f}: line 2 is not a JSON record"):
        read_metrics(f)


def test_a_resume_marker_drops_what_the_resumed_run_does_again(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(
        lines(
            *[{"step": s, "loss": 1.0} for s in (1, 2, 3, 4, 5)],
            {"step": 4, "split": "eval"},
            {"event": "resume", "step": 3},
            *[{"step": s, "loss": 0.5} for s in (4, 5, 6)],
            {"event": "resume", "step": 0},
            {"step": 1, "loss": 2.0},
        )
    )
    history = read_metrics(f)
    assert [(r["step"], r.get("loss")) for r in history] == [(0, None), (1, 2.0)]  # a restart from 0 keeps nothing
    f.write_text("\n".join(f.read_text().splitlines()[:-2]) + "\n")
    history = read_metrics(f)
    assert [(r["step"], r["loss"]) for r in history if "loss" in r] == [
        (1, 1.0),
        (2, 1.0),
        (3, 1.0),
        (4, 0.5),
        (5, 0.5),
        (6, 0.5),
    ]
    assert not [r for r in history if r.get("split") == "eval"]  # step 4's eval came after the checkpoint


def test_a_resume_appends_and_leaves_the_first_run_byte_for_byte(tmp_path):
    log_steps(tmp_path, 0, [1, 2, 3, 4, 5])
    first = (tmp_path / "metrics.jsonl").read_bytes()
    log_steps(tmp_path, 3, [4, 5, 6])
    after = (tmp_path / "metrics.jsonl").read_bytes()
    assert after.startswith(first)
    assert json.loads(after[len(first) :].splitlines()[0])["event"] == "resume"
    history = read_metrics(tmp_path / "metrics.jsonl")
    assert train_steps(history) == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in history if r.get("split") == "eval"] == [4]  # once: the resumed run's


def test_a_torn_line_gets_its_newline_and_the_resumed_history_reads(tmp_path):
    log_steps(tmp_path, 0, [1, 2, 3])
    f = tmp_path / "metrics.jsonl"
    with open(f, "a") as out:
        out.write('{"time": 1.0, "step": 4, "lo')  # killed mid-write
    torn = f.read_bytes()
    log_steps(tmp_path, 3, [4, 5])
    assert f.read_bytes().startswith(torn + b"\n{")  # the marker stands on its own line
    assert train_steps(read_metrics(f)) == [1, 2, 3, 4, 5]
    log_steps(tmp_path, 5, [6])  # the torn line is no longer last: still recognised by the marker after it
    assert train_steps(read_metrics(f)) == [1, 2, 3, 4, 5, 6]
