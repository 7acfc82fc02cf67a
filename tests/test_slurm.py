"""Through a real Slurm (slurm/local-cluster.sh: slurmctld + nodes n1, n2 on this machine): a 2-node job
trains to the end; a 3-cell sweep runs as a job array and a dependent job gathers the table; a
preempted job checkpoints, requeues itself and resumes to the same final prompt as an uninterrupted
run; a killed rank fails the job in bounded time (launch.max_restarts=0) and the rerun resumes from the last
checkpoint, or (issue 22) reruns the step inside the allocation and completes, as `ptune status` says."""

import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import rank_pid, read_jsonl
from ptune_dist.checkpoint import state as ckpt
from ptune_dist.cli import main
from ptune_dist.errors import PtuneError
from ptune_dist.launcher import slurm
from ptune_dist.slurm.templates import cluster_script

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
TINY = [
    "method.num_virtual_tokens=4",
    "data.max_train_examples=64",
    "data.max_eval_examples=8",
    "data.batch_size=4",
    "train.log_every=1",
    "train.progress_bar=false",
    "train.eval_baseline=false",
    "train.tensorboard=false",
]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")


def responsive() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and {"n1", "n2"} <= {line.split()[0] for line in out.stdout.splitlines()}


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster runs slurmctld/slurmd as root (slurm/local-cluster.sh)")
    started = not responsive()
    if started:
        subprocess.run(["bash", str(cluster_script()), "up"], check=True, timeout=600)
    yield
    if started:
        subprocess.run(["bash", str(cluster_script()), "down"], timeout=120)


def submit(out: Path, *extra) -> str:
    assert main(["launch", QUICKSTART, "launch.backend=slurm", f"output_dir={out}", *TINY, *extra]) == 0
    return json.loads((out / "slurm" / "job.json").read_text())["job_id"]


def wait(job: str, timeout: float = 400) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = slurm.job_state(job)
        if state.get("JobState") in ENDED:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} did not end within {timeout} s: {slurm.job_state(job)}")


def losses(out: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r and "split" not in r}


@pytest.fixture
def no_slurm(monkeypatch):
    """subprocess.run that records Slurm commands instead of running them."""
    calls = []

    def run(cmd, *args, **kwargs):
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(slurm.subprocess, "run", run)
    return calls


@pytest.mark.parametrize(
    "record, bad",
    [
        ({"job_id": "--user=root"}, "job_id='--user=root'"),
        ({"job_id": "12", "gather_job_id": "-a"}, "gather_job_id='-a'"),
        ({"job_id": "12 13"}, "job_id='12 13'"),
        ({"job_id": "12\n"}, "job_id='12\\n'"),
        ({"job_id": True}, "job_id=True"),
        ({"job_id": ["1"]}, "job_id=['1']"),
        ({"job_id": "\uff11"}, "job_id='\uff11'"),
        # issue 21: each value with its type: a string is not a list of ids, a number not an id string
        ({"kind": "study", "job_ids": "4242"}, "job_ids='4242' is not a list (str found)"),
        ({"kind": "study", "job_ids": 4242}, "job_ids=4242 is not a list (int found)"),
        ({"kind": "study", "job_ids": ["12", "--user=x"]}, "job_ids=['12', '--user=x'] is not a Slurm job id"),
        ({"kind": "study", "job_ids": [12]}, "job_ids=[12] is not a Slurm job id"),
        ({"job_id": 12}, "job_id=12 is not a Slurm job id"),
        ({"job_id": "12", "gather_job_id": 13}, "gather_job_id=13"),
        ({"job_id": ""}, "job_id=''"),
        ({"kind": "../x", "job_id": "12"}, "kind='../x' is not one of 'train'"),
    ],
)
def test_job_ids_read_back_from_disk_are_checked(record, bad, tmp_path, no_slurm):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "job.json").write_text(json.dumps(record))
    with pytest.raises(PtuneError) as e:
        slurm.job_id_of(str(tmp_path))
    assert str(e.value).startswith(f"{tmp_path / 'slurm' / 'job.json'}: {bad}"), str(e.value)
    assert "nothing was sent to Slurm" in str(e.value)
    assert main(["cancel", str(tmp_path)]) == 2 and main(["status", str(tmp_path)]) == 2
    assert no_slurm == []


def test_good_job_ids_reach_scontrol_and_scancel_as_they_are(tmp_path, no_slurm):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "job.json").write_text(json.dumps({"job_id": "12", "gather_job_id": "13"}))
    assert slurm.job_id_of(str(tmp_path)) == ["12", "13"]
    study = {"kind": "study", "job_ids": ["12", "14"], "gather_job_id": "15"}
    (tmp_path / "slurm" / "job.json").write_text(json.dumps(study))
    assert slurm.job_id_of(str(tmp_path)) == ["15", "12", "14"]
    assert slurm.job_id_of("7_3") == ["7_3"] and slurm.job_id_of("42") == ["42"]
    for typed in ("-1", "1_", "_1", "1_2_3", "1;2", "--user=root", "\uff11"):
        with pytest.raises(PtuneError, match="neither a Slurm job id"):
            slurm.job_id_of(typed)
    slurm.cancel("12")
    slurm.job_state("7_3")
    assert no_slurm == [["scancel", "12"], ["scontrol", "show", "job", "-o", "7_3"]]
    for call in (slurm.cancel, slurm.job_state):
        with pytest.raises(PtuneError, match="is not a Slurm job id"):
            call("--me")
    assert len(no_slurm) == 2


def test_sbatch_answer_is_checked(tmp_path, monkeypatch):
    answers = iter(["123;cluster\n", "--dependency=x\n"])
    monkeypatch.setattr(
        slurm.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout=next(answers), stderr="")
    )
    assert slurm.sbatch(tmp_path / "a.sbatch") == "123"
    with pytest.raises(PtuneError, match="printed: '--dependency=x' is not a Slurm job id"):
        slurm.sbatch(tmp_path / "a.sbatch")


@pytest.mark.parametrize(
    "rc, stderr, expected",
    [
        (1, "slurm_load_jobs error: Invalid job id specified\n", "UNKNOWN (no longer known to slurmctld)"),
        (
            1,
            "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
            "scontrol show job 12 failed (exit 1): slurm_load_jobs error: Unable to contact slurm controller",
        ),
        (1, "", "scontrol show job 12 failed (exit 1): no message"),
        (None, "", "scontrol: cannot run it"),
    ],
)
def test_status_tells_a_forgotten_job_from_an_unreachable_slurmctld(rc, stderr, expected, monkeypatch, capsys):
    """Only "Invalid job id specified" means slurmctld forgot the job; any other failure of scontrol
    (slurmctld down, no scontrol at all) is an error with scontrol's words, not a state."""

    def run(cmd, *args, **kwargs):
        if rc is None:
            raise FileNotFoundError(2, "No such file or directory", cmd[0])
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr=stderr)

    monkeypatch.setattr(slurm.subprocess, "run", run)
    forgotten = "Invalid job id" in stderr
    if forgotten:
        assert slurm.job_state("12") == {}
    else:
        with pytest.raises(PtuneError, match=re.escape(expected)):
            slurm.job_state("12")
    code = main(["status", "12"])
    out, err = capsys.readouterr()
    assert code == (0 if forgotten else 2) and expected in (out if forgotten else err), out + err
    assert "Traceback" not in err


def test_two_node_job_trains_to_the_end(cluster, tmp_path, capsys):
    job = submit(tmp_path, "launch.nnodes=2", "train.steps=3")
    state = wait(job)
    log = (tmp_path / "slurm" / f"ptune-{job}.out").read_text()
    assert state["JobState"] == "COMPLETED", log[-3000:]
    assert state["NodeList"] == "n[1-2]" and "rendezvous n1:" in log
    held = next(r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "parameters")
    assert len(held["bytes_per_rank"]) == 2  # one rank per node
    assert list(losses(tmp_path)) == [1, 2, 3] and (tmp_path / "final" / "trainable.safetensors").is_file()
    assert main(["status", str(tmp_path)]) == 0
    assert '"JobState": "COMPLETED"' in capsys.readouterr().out


def test_cancel_a_submitted_run(cluster, tmp_path, capsys):
    job = submit(tmp_path, "train.steps=400")
    deadline = time.time() + 120
    while time.time() < deadline and slurm.job_state(job).get("JobState") != "RUNNING":
        time.sleep(0.5)
    assert main(["cancel", str(tmp_path)]) == 0
    assert wait(job, timeout=120)["JobState"] == "CANCELLED"


def test_sweep_is_a_job_array_with_a_gathered_table(cluster, tmp_path):
    assert (
        main(
            [
                "sweep",
                QUICKSTART,
                "launch.backend=slurm",
                f"output_dir={tmp_path}",
                "train.steps=2",
                *TINY,
                "--grid",
                "train.seed=0,1,2",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "slurm" / "job.json").read_text())
    state = wait(record["gather_job_id"])
    assert state["JobState"] == "COMPLETED"
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",done," in r for r in rows[1:]), rows
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "1", "2"]
    for cell in ("000", "001", "002"):
        assert (tmp_path / "cells" / cell / "final" / "trainable.safetensors").is_file()


def test_preempted_job_requeues_and_resumes_to_the_same_prompt(cluster, tmp_path):
    run = ["launch.nnodes=2", "train.steps=24", "train.save_every=10"]
    job = submit(tmp_path / "slurm-run", *run)
    metrics = tmp_path / "slurm-run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and len(losses(metrics.parent) if metrics.exists() else {}) < 4:
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what --signal=USR1@N sends before the limit
    state = wait(job)
    log = (tmp_path / "slurm-run" / "slurm" / f"ptune-{job}.out").read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", log[-3000:]
    assert "requeueing" in log and "(restart 1)" in log
    resumed = [r["step"] for r in read_jsonl(metrics) if r.get("event") == "resume"]
    assert len(resumed) == 1 and 4 <= resumed[0] < 24
    reference = tmp_path / "uninterrupted"
    assert main(["launch", QUICKSTART, f"output_dir={reference}", "launch.nproc_per_node=2", *TINY, *run[1:]]) == 0
    a = load_file(metrics.parent / "final" / "trainable.safetensors")
    b = load_file(reference / "final" / "trainable.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_rank_fails_the_job_and_the_rerun_resumes(cluster, tmp_path):
    job = submit(tmp_path, "launch.nnodes=2", "train.steps=400", "train.save_every=3", "launch.max_restarts=0")
    deadline = time.time() + 300
    while time.time() < deadline and ckpt.latest_complete(tmp_path / "checkpoints") is None:
        time.sleep(0.5)
    os.kill(rank_pid(tmp_path / "launch.yaml", "SLURM_PROCID=1"), 9)
    killed = time.time()
    state = wait(job, timeout=120)
    assert state["JobState"] == "FAILED" and time.time() - killed < 60, state
    newest = ckpt.latest_complete(tmp_path / "checkpoints")
    ckpt.verify(newest)
    saved = int(newest.name.split("-")[1])
    rerun = submit(tmp_path, "launch.nnodes=2", f"train.steps={saved + 2}", "train.save_every=3")
    assert wait(rerun)["JobState"] == "COMPLETED"
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "resume"][-1] == saved


def test_killed_rank_recovers_within_the_allocation_and_status_says_so(cluster, tmp_path, capsys):
    """issue 22: a rank killed on one node reruns the srun step from the newest checkpoint inside the same
    allocation (no requeue), the job completes, and `ptune status` lists the restart."""
    job = submit(tmp_path, "launch.nnodes=2", "train.steps=12", "train.save_every=3", "launch.max_restarts=2")
    deadline = time.time() + 300
    while time.time() < deadline and ckpt.latest_complete(tmp_path / "checkpoints") is None:
        time.sleep(0.2)
    os.kill(rank_pid(tmp_path / "launch.yaml", "SLURM_PROCID=1"), 9)
    state = wait(job)
    log = (tmp_path / "slurm" / f"ptune-{job}.out").read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "0", log[-3000:]
    assert log.count("restarting every rank from the newest checkpoint (restart 1 of 2") == 1, log[-3000:]
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "restart"]
    assert [(r["attempt"], r["of"], r["rank"]) for r in records] == [(1, 2, 1)] and records[0]["host"] in ("n1", "n2")
    assert list(losses(tmp_path)) == list(range(1, 13)) and (tmp_path / "final" / "trainable.safetensors").is_file()
    assert main(["status", str(tmp_path)]) == 0
    shown = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert shown["JobState"] == "COMPLETED" and shown["ptune_restarts"][0].startswith("restart 1 of 2: rank 1 on n")


def test_study_runs_as_one_array_per_resource_shape_then_reports(cluster, tmp_path):
    """`ptune study` on Slurm: the two model sizes ask for different resources (model_overrides), so their cells
    go in two arrays; the report job runs after both; a second `ptune study` finds nothing left to submit."""
    from test_study_run import SMOL, STUDY

    study = tmp_path / "study"
    args = [
        "study",
        *STUDY,
        "launch.backend=slurm",
        f"output_dir={study}",
        f"study.model_overrides={{'{SMOL}': [launch.cpus_per_task=2]}}",
    ]
    assert main(args) == 0
    record = json.loads((study / "slurm" / "job.json").read_text())
    assert [a["cells"] for a in record["arrays"]] == [3, 3] and len(record["job_ids"]) == 2
    smol = (study / "slurm" / "array-1.sbatch").read_text()
    assert "#SBATCH --cpus-per-task=2" in smol and "#SBATCH --array=0-2" in smol
    state = wait(record["gather_job_id"], timeout=600)
    assert state["JobState"] == "COMPLETED", state
    rows = list(csv.DictReader((study / "results.csv").open()))
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows), rows
    for r in rows:  # each array task recorded its start and exit status (launcher/grid_attempts.py)
        assert json.loads((study / "cells" / r["cell"] / "attempts.json").read_text()) == {"starts": 1, "last_rc": 0}
    assert (study / "report" / "report.md").is_file()
    assert main(args) == 0  # everything done: nothing more to submit
    assert json.loads((study / "slurm" / "job.json").read_text())["note"] == "every cell is done or running"
