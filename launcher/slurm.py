"""The Slurm backend: render an sbatch script from slurm/train.sbatch, submit it, remember the job.

Inside the job, srun starts nproc_per_node ranks on each node; each reads its rank and world size
from SLURM_PROCID / SLURM_NTASKS (ptune_dist/rank_env.py) and meets the others at MASTER_ADDR (the first
host of the job) and MASTER_PORT (derived from the job id). A USR1 `launch.signal_seconds` before
the time limit (or a TERM) makes the ranks agree to stop, save a checkpoint and exit, the main rank
leaving a marker file (train/preempt.py); the script then requeues the job, which resumes from that
checkpoint (train.resume=auto on every restart).

A rank fault inside the allocation (srun reports a task killed, or the ranks end with RANK_FAULT) reruns
the srun step from the newest checkpoint; a job Slurm requeued by itself (--requeue: its allocation was
lost, a node failed) resumes. Both count against launch.max_restarts together, in a file of the log
folder, and each is recorded in the run's metrics.jsonl (launcher/restarts.py main, run by the script);
beyond the budget the job ends with one line. `ptune status` lists the restarts a run's record holds.

GPUs (launch.gpus_per_node > 0): the job asks for them with --gpus-per-node, one per rank, and srun
hands every rank of a node all of that node's GPUs; each rank takes its own, cuda:SLURM_LOCALID
(ptune_dist/device.py). With no GPUs the script has no GPU line at all.

Job ids (`ptune status|cancel RUN_DIR|JOB_ID`, slurm/job.json, sbatch's answer) are checked before they
reach scontrol or scancel: a string of digits, or digits_digits for an array task (read_back.job_id, the
one check). A job record is read back with the type and domain of every field (read_job_record): a
job_ids that is not a list of id strings ("4242", 4242) is refused whole, never iterated character by
character, and no Slurm command runs for a record that does not check.

Slurm's commands fail in words: a missing command, an unreachable slurmctld or a refused submission is
a PtuneError carrying what the command said, never a traceback and never a silent answer. Only
scontrol's "Invalid job id specified" means the job is gone (slurmctld forgets ended jobs after
MinJobAge): `job_state` answers {} for it and raises for every other failure.

A log folder's job.json is replaced only by a submission of the same kind for the same output_dir
(`check_record`): the record of another run or sweep sharing launch.log_dir is kept, and the submission
refused before anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ptune_dist import read_back
from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import ConfigError, PtuneError
from ptune_dist.slurm.templates import template
from ptune_dist.train.preempt import PREEMPTED, RANK_FAULT

from .files import make_dir, write_file
from .shell import CONSTRAINT, quote, render, sbatch_option, sbatch_value, setup_line

INVALID_JOB = "Invalid job id specified"  # scontrol's words for a job slurmctld no longer knows


def log_dir(cfg: RunConfig) -> Path:
    return Path(cfg.launch.log_dir or Path(cfg.output_dir) / "slurm").resolve()


# srun options of a GPU job. No per-task binding, on purpose: srun(1) says "By default every spawned
# task can access every GPU allocated to the step", and a step gets all of the job's GPUs. Binding one
# GPU to each task (--gpus-per-task=1, or --gpu-bind=single:1) instead puts each task in a device cgroup
# of its own where cgroup.conf has ConstrainDevices=yes: NCCL then cannot see the node's other GPUs and
# silently drops NVLink for slower paths (NVIDIA/nccl#1066: "NCCL needs to see all GPUs on the same node
# for all NVLink detection to work properly"), and DeepSpeed's engine calls set_device(LOCAL_RANK), an
# index that exists only when the rank sees the node's GPUs. --gpu-bind=none ("turns off binding if
# --gpus-per-task is requested") keeps every GPU visible even where a site default or sbatch_extra binds.
SRUN_GPU_OPTIONS = "--gpu-bind=none"


def gpus_per_node(cfg: RunConfig) -> int:
    """launch.gpus_per_node, checked: one rank per GPU, and GPUs only for a run that uses them."""
    L = cfg.launch
    n = int(L.gpus_per_node)
    if n < 0:
        raise ConfigError(f"launch.gpus_per_node={n} must be >= 0 (0: a CPU job)")
    if n and n != L.nproc_per_node:
        raise ConfigError(
            f"launch.gpus_per_node={n} must equal launch.nproc_per_node={L.nproc_per_node}: ptune runs "
            f"one rank per GPU; set launch.nproc_per_node={n} (or launch.gpus_per_node=0 for a CPU job)"
        )
    if n and cfg.train.device == "cpu":
        raise ConfigError(
            f"launch.gpus_per_node={n} with train.device=cpu: the job would hold GPUs it never uses; "
            "set train.device=auto or cuda, or launch.gpus_per_node=0"
        )
    return n


def common_values(cfg: RunConfig, gpus: bool = True) -> dict:
    """The validated #SBATCH extras and set-up lines every template shares (the GPU request only where
    `gpus`: the gathering job reads JSON files)."""
    L, gpus = cfg.launch, gpus_per_node(cfg) if gpus else 0
    lines = []
    for key in ("partition", "account", "qos", "mem"):
        if getattr(L, key):
            lines.append(f"#SBATCH --{key}={sbatch_value(f'launch.{key}', getattr(L, key))}")
    if L.constraint:
        lines.append(f"#SBATCH --constraint={sbatch_value('launch.constraint', L.constraint, CONSTRAINT)}")
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    lines += [f"#SBATCH {sbatch_option('launch.sbatch_extra', x)}" for x in L.sbatch_extra]
    return {
        "sbatch_lines": "\n".join(lines),
        "setup": "\n".join(setup_line("launch.setup", x) for x in L.setup),
        "python": quote(L.python or sys.executable),
        "workdir": quote(os.getcwd()),
    }


def train_script(
    cfg: RunConfig,
    config_path: Path,
    job_name: str = "",
    log_name: str = "%x-%j.out",
    array: str = "",
    config_expr: str = "",
    record: str = "",
) -> str:
    """The sbatch script of a training job; `array`/`config_expr` turn it into a sweep's job array. `record`:
    a command the script runs with one more argument before training (start), when requeued (requeued) and
    after (the exit status), e.g. a study's attempt record; it must not fail the job (end it with `|| true`
    semantics itself); empty: nothing is recorded."""
    L = cfg.launch
    threads = L.threads_per_proc or max(1, L.cpus_per_task or 1)
    values = common_values(cfg)
    if array:
        values["sbatch_lines"] = f"#SBATCH --array={sbatch_value('array', array)}\n" + values["sbatch_lines"]
    values.update(
        {
            "job_name": sbatch_value("launch.job_name", job_name or L.job_name),
            "nnodes": str(int(L.nnodes)),
            "nproc_per_node": str(int(L.nproc_per_node)),
            "cpus_per_task": str(int(L.cpus_per_task or threads)),
            "time": sbatch_value("launch.time", L.time),
            "log": sbatch_value("launch.log_dir", log_dir(cfg) / log_name),
            "marker_dir": quote(log_dir(cfg)),
            "signal_seconds": str(int(L.signal_seconds)),
            "threads": str(int(threads)),
            "config": config_expr or quote(Path(config_path).resolve()),
            "preempted": str(PREEMPTED),
            "rank_fault": str(RANK_FAULT),
            "max_restarts": str(int(L.max_restarts)),
            "record": f"{record} " if record else ": ",  # `: ARG` is the shell's no-op
            "srun_gpus": f" {SRUN_GPU_OPTIONS}" if gpus_per_node(cfg) else "",
        }
    )
    return render(template("train.sbatch"), values)


GATHERERS = {"gather": "gather", "study report": "report"}  # the commands a gathering job may run, its name's suffix


def gather_script(cfg: RunConfig, sweep_dir: Path, after: str, command: str = "gather") -> str:
    """The job that runs `ptune <command> DIR` once the jobs `after` (ids joined by ':') have ended."""
    values = common_values(cfg, gpus=False)
    values.update(
        {
            "job_name": sbatch_value("launch.job_name", f"{cfg.launch.job_name}-{GATHERERS[command]}"),
            "log": sbatch_value("launch.log_dir", log_dir(cfg) / "%x-%j.out"),
            "after": sbatch_value("dependency", after),
            "command": command,
            "sweep_dir": quote(Path(sweep_dir).resolve()),
        }
    )
    return render(template("gather.sbatch"), values)


def check_job_id(v, where: str) -> str:
    """`v` as a job id (read_back.job_id: every id that reaches sbatch, scontrol or scancel, typed or read
    back, passes it; those commands take an argument starting with `-` as an option, so an id
    `--user=root` would cancel someone else's jobs), or a PtuneError naming `where` it came from."""
    try:
        return read_back.job_id(v)
    except ValueError as e:
        raise PtuneError(f"{where}: {v!r} is not {e}") from None


def run_slurm(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a Slurm command, capturing its output; a missing command or a timeout is a PtuneError."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except OSError as e:
        raise PtuneError(
            f"{cmd[0]}: cannot run it ({e.strerror}); Slurm's commands must be on PATH "
            "(run this on a login node of the cluster)"
        ) from None
    except subprocess.TimeoutExpired:
        raise PtuneError(
            f"{' '.join(cmd)}: no answer within {timeout:g} s (is slurmctld reachable?); try again later"
        ) from None


def sbatch(script_path: Path) -> str:
    """Submit; returns the job id."""
    done = run_slurm(["sbatch", "--parsable", str(script_path)])
    if done.returncode != 0:
        raise PtuneError(f"sbatch {script_path} failed: {done.stderr.strip() or done.stdout.strip()}")
    # --parsable prints `id` or `id;cluster`; the id goes into job.json and a dependency line
    return check_job_id(done.stdout.strip().split(";")[0], f"sbatch --parsable {script_path} printed")


def check_record(cfg: RunConfig, kind: str) -> Path:
    """The log folder's job.json path, after refusing one that records another run or sweep."""
    path = log_dir(cfg) / "job.json"
    if not path.exists():
        return path
    out = str(Path(cfg.output_dir).resolve())
    remedy = "remove it if it is yours, or set launch.log_dir to another folder (a submission would replace it)"
    rec = read_back.read_record(path, "a job record ptune can read", remedy)
    theirs = (
        read_back.value(rec, "kind", read_back.one_of(*KINDS), path, remedy),
        read_back.value(rec, "output_dir", read_back.text, path, remedy),
    )
    if theirs != (kind, out):
        raise PtuneError(
            f"{path} records the {theirs[0]} job of output_dir={theirs[1]!r}; submitting this {kind} "
            f"(output_dir={out!r}) would replace it: set launch.log_dir to another folder, or choose "
            "another output_dir"
        )
    return path


def write_record(folder: Path, record: dict) -> Path:
    text = json.dumps({**record, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1)
    return write_file(folder / "job.json", text, "launch.log_dir")


def submit_train(cfg: RunConfig, config_path: Path) -> dict:
    check_record(cfg, "train")
    script_text = train_script(cfg, config_path)
    folder = make_dir(log_dir(cfg), "launch.log_dir")
    script = write_file(folder / "train.sbatch", script_text, "launch.log_dir")
    job = sbatch(script)
    record = {
        "kind": "train",
        "job_id": job,
        "script": str(script),
        "log": str(folder / f"{cfg.launch.job_name}-{job}.out"),
        "output_dir": str(Path(cfg.output_dir).resolve()),
    }
    write_record(folder, record)
    return record


KINDS = ("train", "sweep", "study")  # what wrote a job.json: submit_train, sweep.submit, grid_arrays.submit (a study)
RECORD_REMEDY = (
    "damaged or edited; nothing was sent to Slurm: find the jobs with squeue and give their ids "
    "(`ptune cancel JOB_ID`), or submit again"
)


def read_job_record(path: Path) -> list[str]:
    """The job ids a job.json records (job_id, gather_job_id, a study's job_ids), each field checked with
    its type (job_ids a list of id strings) and kind one of KINDS; a PtuneError naming the file and key."""
    rec = read_back.read_record(path, "a job record", RECORD_REMEDY)
    read_back.value(rec, "kind", read_back.one_of(*KINDS), path, RECORD_REMEDY, default=None)
    ids = [
        read_back.value(rec, k, read_back.job_id, path, RECORD_REMEDY, default=None)
        for k in ("job_id", "gather_job_id")
    ]
    ids += read_back.value(rec, "job_ids", read_back.list_of(read_back.job_id), path, RECORD_REMEDY, default=[])
    ids = list(dict.fromkeys(i for i in ids if i is not None))
    if not ids:
        raise PtuneError(f"{path}: no job_id in it (nothing was submitted, or the record was edited)")
    return ids


def job_id_of(target: str) -> list[str]:
    """Job ids from a run/sweep/study folder (its slurm/job.json: read_job_record) or given directly, each
    checked (read_back.job_id)."""
    if not target.strip():
        raise PtuneError("give a run folder or a Slurm job id (the argument is empty)")
    p = Path(target)
    for candidate in (p / "slurm" / "job.json", p / "job.json"):
        if candidate.is_file():
            return read_job_record(candidate)
    try:
        return [read_back.job_id(target)]
    except ValueError:
        pass
    if p.is_dir():
        raise PtuneError(f"{target}: a folder without slurm/job.json (no job was submitted from it)")
    raise PtuneError(
        f"{target!r}: neither a Slurm job id (digits, or digits_digits for an array task) nor a folder "
        "with slurm/job.json"
    )


def job_state(job_id: str) -> dict:
    """scontrol's view of a job: {JobState, Reason, RestartCnt, NodeList, ExitCode, ...}; {} once slurmctld
    has forgotten it ("Invalid job id specified"). Any other failure (slurmctld unreachable, no scontrol)
    is a PtuneError with scontrol's own words: an unknown state is never reported as a forgotten job."""
    done = run_slurm(["scontrol", "show", "job", "-o", check_job_id(job_id, "job id")], timeout=120)
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip()
        if INVALID_JOB in said:
            return {}
        raise PtuneError(
            f"scontrol show job {job_id} failed (exit {done.returncode}): "
            f"{said or 'no message'}; the job's state is unknown, try again once slurmctld answers"
        )
    fields = {}
    for line in done.stdout.splitlines()[:1]:
        for item in line.split():
            if "=" in item:
                k, v = item.split("=", 1)
                fields[k] = v
    return fields


STATUS_KEYS = ("JobState", "Reason", "Restarts", "NodeList", "ExitCode", "RunTime", "StdOut")


def restart_records(run_dir: Path) -> list[str]:
    """The restarts a run's metrics.jsonl records (launcher/restarts.py), one line each."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a torn line: read_metrics' rules, not this summary's
        if isinstance(r, dict) and r.get("event") == "restart":
            who = f"rank {r.get('rank')}" if r.get("rank") is not None else "a rank"
            where = r.get("host") or "?"
            found.append(f"restart {r.get('attempt')} of {r.get('of')}: {who} on {where}: {r.get('why')}")
    return found


def status(target: str) -> list[dict]:
    """`ptune status`: per job, scontrol's view (STATUS_KEYS) and, for a run folder, the restarts its record
    holds (its metrics.jsonl)."""
    found = []
    run_dir = Path(target) if (Path(target) / "slurm" / "job.json").is_file() else None
    for job in job_id_of(target):
        state = job_state(job)
        line = (
            {"job_id": job, **{k: state[k] for k in STATUS_KEYS if k in state}}
            if state
            else {"job_id": job, "JobState": "UNKNOWN (no longer known to slurmctld)"}
        )
        if run_dir is not None:
            line["ptune_restarts"] = restart_records(run_dir)
        found.append(line)
    return found


def cancel(job_id: str) -> None:
    done = run_slurm(["scancel", check_job_id(job_id, "job id")])
    if done.returncode != 0:
        raise PtuneError(f"scancel {job_id} failed: {done.stderr.strip()}")
