"""Recovery without a person (issue 22, launcher/restarts.py): a rank fault restarts every rank from the newest
checkpoint within launch.max_restarts, each restart recorded in metrics.jsonl and on stderr; what is not a rank
fault is never retried; the budget holds (one line, the last failure's status).

The policy is tested with a fake attempt; the end-to-end cases run `ptune launch` over real torchrun with 2 gloo
ranks and SIGKILL a rank at a step drawn from a seed (one case kills the writing rank while a checkpoint's
temporary folder exists), then compare the final weights and the last checkpoint's optimizer state with an
uninterrupted run, bit for bit."""

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptune_dist.launcher import restarts, signals
from ptune_dist.launcher.restarts import classify, classify_status, with_faults
from ptune_dist.train.metrics_file import append_event, read_metrics
from ptune_dist.train.preempt import INTERRUPTED, PREEMPTED, RANK_FAULT
from test_signals_launch import TINY, launch, start, train_losses

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
STEPS, SAVE = 12, ["train.save_every=4"]


# -- the policy ------------------------------------------------------------------------------------------------


def attempts(*results):
    """A fake attempt: returns `results` in turn, remembering each call's argument (restarts made so far)."""
    calls = []

    def attempt(made):
        calls.append(made)
        return results[len(calls) - 1]

    return attempt, calls


def restart_records(run) -> list:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if '"restart"' in x]


def test_a_rank_fault_restarts_within_the_budget_and_the_record_says_which_rank_where_and_why(tmp_path, capsys):
    killed = classify_status(-9, rank=1, host="node7")
    attempt, calls = attempts(killed, killed, 0)
    assert restarts.run(attempt, 3, tmp_path) == 0
    assert calls == [0, 1, 2]  # the second and third start resume
    recs = restart_records(tmp_path)
    assert [(r["attempt"], r["of"], r["rank"], r["host"], r["status"]) for r in recs] == [
        (1, 3, 1, "node7", 137),
        (2, 3, 1, "node7", 137),
    ]
    assert recs[0]["why"] == "killed by signal 9 (SIGKILL)"
    err = capsys.readouterr().err
    assert (
        err.count(
            "ptune: rank 1 on node7: killed by signal 9 (SIGKILL); restarting every rank from the newest "
            "checkpoint (restart 1 of 3, launch.max_restarts)"
        )
        == 1
    )


def test_the_budget_holds_with_one_line_and_the_last_failures_status(tmp_path, capsys):
    fault = classify(1, [{"rank": 0, "exitcode": RANK_FAULT, "time": 2.0, "host": "a"}], world=2)
    assert (fault.rank, fault.retry, fault.status) == (1, True, RANK_FAULT)  # all but rank 1 reported it
    attempt, calls = attempts(classify_status(-9, 0, "a"), fault, 0)
    assert restarts.run(attempt, 1, tmp_path) == RANK_FAULT
    assert calls == [0, 1] and len(restart_records(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "ptune: rank 1 on a: stopped answering or died: rank(s) 0 ended with the rank-fault "
        "status 97; the restart budget is spent (launch.max_restarts=1, 1 restart(s) made)"
    )
    attempt, calls = attempts(classify_status(-9, 0, "a"))
    assert restarts.run(attempt, 0, tmp_path) == 137 and calls == [0]  # 0: never restarted


@pytest.mark.parametrize("status", [2, 1, 3])
def test_what_is_not_a_rank_fault_is_never_retried(tmp_path, capsys, status):
    """A config or data error, a non-finite stop (PtuneError: 2) and an ordinary error (1) end the launch with
    their status; Ctrl-C and a preemption (the ranks' stop records) are statuses, not failures."""
    attempt, calls = attempts(classify(1, [{"rank": 1, "exitcode": status, "time": 1.0, "host": "h"}], 2))
    assert restarts.run(attempt, 3, tmp_path) == status and calls == [0]
    assert "not restarted" in capsys.readouterr().err and not restart_records(tmp_path)
    for stopped in (INTERRUPTED, PREEMPTED):
        attempt, calls = attempts(stopped)
        assert restarts.run(attempt, 3, tmp_path) == stopped and calls == [0]


def test_the_root_cause_is_the_killed_rank_and_statuses_are_read_as_signals():
    # the survivor saw its peer's connection close and failed too, even before torchrun noticed the kill
    both = [{"rank": 0, "exitcode": 1, "time": 1.0, "host": "h"}, {"rank": 1, "exitcode": -9, "time": 2.0, "host": "h"}]
    assert (classify(1, both, 2).rank, classify(1, both, 2).status) == (1, 137)
    # torchrun stopped rank 1 (TERM) after rank 0's data error: a consequence, not the cause
    stopped = [
        {"rank": 0, "exitcode": 2, "time": 1.0, "first": True},
        {"rank": 1, "exitcode": -15, "time": 1.0, "first": False},
    ]
    assert (classify(1, stopped, 2).status, classify(1, stopped, 2).retry) == (2, False)
    stopped[1]["first"] = True  # a torch without the marker: TERM still comes last
    assert classify(1, stopped, 2).status == 2
    assert classify(1, None).retry is False  # torchrun failed without a report: not a rank fault
    assert classify_status(247).status == 137  # the deepspeed launcher's sys.exit(-9)
    assert classify_status(137).retry and not classify_status(130).retry
    faults = [{"rank": r, "exitcode": RANK_FAULT, "time": 1.0, "host": "h"} for r in (0, 1)]
    assert classify(1, faults, 4).rank is None  # two of four reported: which of the others is not known


def test_what_the_survivors_said_names_the_rank_in_the_record():
    """train/peers.py's fault lines (PTUNE_STOP_RECORD/fault-R) name the silent rank and its host."""
    faults = [{"rank": r, "exitcode": RANK_FAULT, "time": 1.0, "host": "h"} for r in (0, 1)]
    said = {0: "rank 3 (host n2, pid 7, last heard at step 5 (train)) stopped answering; this rank waited ..."}
    failure = with_faults(classify(1, faults, 4), said)
    assert (failure.rank, failure.host, failure.retry) == (3, "n2", True)
    assert failure.why == "rank 0 reported: " + said[0]
    error = classify(1, [{"rank": 0, "exitcode": 2, "time": 1.0}], 2)
    assert with_faults(error, said).why == error.why  # not a rank fault: told as it is
    killed = classify(1, [{"rank": 1, "exitcode": -9, "time": 1.0, "host": "h"}], 2)
    told = with_faults(killed, said)
    assert (told.rank, told.host) == (1, "h") and told.why == "killed by signal 9 (SIGKILL); rank 0 reported: " + said[
        0
    ]


def test_restart_records_survive_read_metrics_and_end_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')  # the main rank died mid-write
    append_event(path, {"event": "restart", "attempt": 1, "of": 3, "rank": 0, "host": "h", "why": "x"})
    with open(path, "a") as f:
        f.write('{"event": "resume", "step": 0}\n{"step": 1, "loss": 0.5}\n')  # restarted with no checkpoint
    history = read_metrics(path)
    assert [r.get("event") for r in history] == ["restart", "resume", None] and history[-1]["loss"] == 0.5


def test_slurm_steps_and_requeues_share_one_budget(tmp_path, capsys):
    log, count = tmp_path / "step.err", tmp_path / ".restarts"
    log.write_text("[rank0]: RuntimeError: Connection closed by peer\nsrun: error: node2: task 3: Killed\n")
    assert restarts.srun_failure(137, log).line() == "rank 3 on node2: killed by signal 9 (SIGKILL)"
    argv = [str(tmp_path), "2", str(count)]
    assert restarts.main(["step", "137", *argv, str(log)]) == 0
    assert restarts.main(["requeue", *argv]) == 0  # a lost node: the second and last restart
    assert restarts.main(["step", "137", *argv, str(log)]) == 1
    assert "the restart budget is spent (launch.max_restarts=2" in capsys.readouterr().err
    assert restarts.main(["step", "2", *argv]) == 1  # a config error: never, budget or not
    assert [r["attempt"] for r in restart_records(tmp_path)] == [1, 2] and count.read_text() == "2\n"
    assert restart_records(tmp_path)[1]["why"].startswith("the job's allocation was lost")


# -- end to end: ptune launch, torchrun, 2 gloo ranks ---------------------------------------------------------


def ranks_of(proc) -> dict[int, int]:
    """{RANK: pid} of the `ptune train` ranks under `proc` whose stop handlers are up."""
    found = {}
    for pid in signals.descendants(proc.pid):
        try:
            env = dict(x.split("=", 1) for x in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in x)
        except OSError:
            continue
        if "RANK" in env and signals.catches(pid, signal.SIGUSR1):
            found[int(env["RANK"])] = pid
    return found


def logged_step(run) -> int:
    path = run / "metrics.jsonl"
    steps = (
        [json.loads(x).get("step", 0) for x in path.read_text().splitlines()[-3:] if x.endswith("}")]
        if path.exists()
        else []
    )
    return max(steps, default=0)


def kill_at(proc, run, rank: int, step: int, spare=()) -> int:
    """SIGKILL `rank` once the run has logged `step` (ranks with pids in `spare` are an earlier attempt's)."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        ranks = {r: p for r, p in ranks_of(proc).items() if p not in spare}
        if len(ranks) == 2 and logged_step(run) >= step:
            os.kill(ranks[rank], signal.SIGKILL)
            return ranks[rank]
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} never reached step {step}")


def kill_during_save(proc, run) -> str:
    """SIGKILL the writing rank (0) while a checkpoint's temporary folder exists; the folder's name."""
    deadline, folder = time.time() + 240, run / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        try:
            tmp = [e.name for e in os.scandir(folder) if e.name.startswith(".step-")]
        except OSError:
            tmp = []
        if tmp:
            pids = ranks_of(proc)
            os.kill(pids[0], signal.SIGKILL)
            return tmp[0]
        time.sleep(0.0005)
    raise AssertionError("no checkpoint save was seen")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("restarts") / "ref"
    proc = launch(run, STEPS, *SAVE)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return run


def same_as(run, ref):
    for name in (
        "final/trainable.safetensors",
        f"checkpoints/step-{STEPS}/optimizer.safetensors",
        f"checkpoints/step-{STEPS}/trainable.safetensors",
    ):
        a, b = load_file(run / name), load_file(ref / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert train_losses(run) == train_losses(ref)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_killed_rank_restarts_the_launch_and_it_ends_bit_identical(tmp_path, uninterrupted, seed):
    """Seed 1: a rank killed at a drawn step, then rank 0 killed while it writes a checkpoint; seed 2: one kill."""
    draw = random.Random(seed)
    run = tmp_path / "run"
    proc = launch(run, STEPS, *SAVE)
    first = kill_at(proc, run, draw.randrange(2), draw.randrange(2, STEPS - 2))
    kills = 1
    if seed == 1:
        while len(ranks_of(proc)) < 2 or first in ranks_of(proc).values():
            time.sleep(0.05)
        assert kill_during_save(proc, run).startswith(".step-")
        kills = 2
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    recs = restart_records(run)
    assert [r["attempt"] for r in recs] == list(range(1, kills + 1)) and recs[0]["why"].startswith("killed by signal 9")
    assert out.count("restarting every rank from the newest checkpoint") == kills
    assert "ChildFailedError" not in out
    same_as(run, uninterrupted)


@pytest.mark.slow
def test_a_restart_under_zero3_with_packed_batches_ends_bit_identical(tmp_path):
    """The partitioned state (DeepSpeed ZeRO-3) and the packed data order come back exactly after a restart."""
    more = [
        "distributed.engine=deepspeed",
        "distributed.zero_stage=3",
        "data.packing=true",
        "data.max_length=128",
        "train.save_every=2",
    ]
    steps, ref, run = 6, tmp_path / "ref", tmp_path / "run"
    done = launch(ref, steps, *more)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0, out[-3000:]
    proc = launch(run, steps, *more)
    kill_at(proc, run, 1, 3)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert [r["rank"] for r in restart_records(run)] == [1]
    a, b = load_file(run / "final/trainable.safetensors"), load_file(ref / "final/trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train_losses(run) == train_losses(ref)


@pytest.mark.slow
def test_the_budget_holds_end_to_end(tmp_path):
    run = tmp_path / "run"
    proc = launch(run, 40, "launch.max_restarts=1")
    first = kill_at(proc, run, 1, 2)
    kill_at(proc, run, 0, 0, spare={first})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 137, out[-3000:]
    assert "the restart budget is spent (launch.max_restarts=1, 1 restart(s) made)" in out.splitlines()[-1]
    assert [(r["attempt"], r["rank"]) for r in restart_records(run)] == [(1, 1)]


def test_a_data_error_in_the_ranks_is_not_retried(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "My parcel never came.", "label": "shipping"}\n{"text": \n')
    run = tmp_path / "run"
    proc = start("launch", QUICKSTART, f"output_dir={run}", "train.steps=2", *TINY, f"tasks.0.train={bad}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert "not valid JSON" in out and "ended with a config or data error" in out and "not restarted" in out
    assert "restarting" not in out and not restart_records(run)
