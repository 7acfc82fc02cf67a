"""The local backend: N ranks on this machine (or this node of several), started by torchrun or by the
deepspeed launcher, each running `ptune train` on the same resolved config.

torchrun watches its ranks: when one dies it stops the others and exits non-zero, so a failed rank
ends the whole run instead of leaving the rest waiting in a collective. The deepspeed launcher does
not set OMP_NUM_THREADS; we set it for both (cores / ranks unless launch.threads_per_proc says).

On a machine with GPUs each rank takes one of them (ptune_dist/device.py), so a run on GPUs starts at
most as many ranks as this machine shows GPUs; `check_gpus` says so before anything starts.

The command is a list of arguments (no shell runs it); `ptune launch --dry-run` prints it quoted
(shlex.join), so what it prints runs as it is.

Ctrl-C and other stop signals go to this process only and are forwarded to the ranks once each
(signals.py); a rank stopped by one saves its checkpoint and exits 0 with its status written to a folder
of this call's (train/preempt.py PTUNE_STOP_RECORD), so torchrun ends quietly, and `run` returns that
status: 130 after a Ctrl-C, 99 after TERM. This process waits for every rank before it returns.

A rank fault (a rank killed by a signal, or ranks ending with RANK_FAULT because a peer died or stopped
answering) restarts every rank from the newest checkpoint, at most launch.max_restarts times
(restarts.py: the policy, the record in metrics.jsonl, the line). torchrun runs through
launcher/torchrun.py with no restarts of its own: it reports which rank failed and how, and this process
decides; torchrun's own --max-restarts would restart on any failure, a config error included.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from ptune_dist.config.schema import RunConfig
from ptune_dist.config.validate import rdzv_address
from ptune_dist.errors import ConfigError
from ptune_dist.rank_env import free_port
from ptune_dist.runtime import allocator_env
from ptune_dist.train.peers import read_faults
from ptune_dist.train.preempt import INTERRUPTED, PREEMPTED, STOP_RECORD_ENV, recorded

from . import restarts, signals


def check_gpus(cfg: RunConfig) -> None:
    """Refuse, before any rank starts, what each rank would refuse at its start: more ranks than GPUs
    when train.device is auto or cuda, or train.device=cuda without a GPU."""
    L, device = cfg.launch, cfg.train.device
    if L.gpus_per_node:
        raise ConfigError(
            f"launch.gpus_per_node={L.gpus_per_node} is what a Slurm job asks for "
            "(launch.backend=slurm); the local backend gives each of launch.nproc_per_node ranks one of "
            "this machine's GPUs: set launch.nproc_per_node and leave launch.gpus_per_node=0"
        )
    if device == "cpu":
        return
    from ptune_dist.device import gpu_count  # imports torch: only when a launch needs to know

    count = gpu_count()
    if count == 0 and device == "cuda":
        raise ConfigError("train.device=cuda, but this machine shows no CUDA GPU; use train.device=auto or cpu")
    if count and L.nproc_per_node > count:
        raise ConfigError(
            f"launch.nproc_per_node={L.nproc_per_node}, but this machine shows {count} GPU(s) and "
            f"train.device={device} gives each rank a GPU of its own: start at most {count} ranks per "
            "node, or set train.device=cpu"
        )


def command(cfg: RunConfig, config_path: Path) -> list[str]:
    L = cfg.launch
    check_gpus(cfg)
    train = ["-m", "ptune_dist.cli", "train", str(Path(config_path).resolve())]
    if L.launcher == "deepspeed":
        if L.nnodes > 1:
            raise ConfigError(
                "launch.launcher=deepspeed runs on one node here; use torchrun (rendezvous) or Slurm for several nodes"
            )
        return [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(L.nproc_per_node),
            "--master_port",
            str(free_port()),
            "--no_local_rank",
            "--module",
            *train[1:],
        ]
    cmd = [sys.executable, "-m", "ptune_dist.launcher.torchrun", f"--nproc_per_node={L.nproc_per_node}"]
    if L.nnodes > 1:
        if not L.rdzv_endpoint:
            raise ConfigError("launch.nnodes > 1 needs launch.rdzv_endpoint=host:port (node 0's address)")
        host, port = rdzv_address(L.rdzv_endpoint)  # validated again: a config may be built by hand; [IPv6] unbracketed
        cmd += [
            f"--nnodes={L.nnodes}",
            f"--node_rank={L.node_rank}",
            "--rdzv_backend=static",
            f"--master_addr={host}",
            f"--master_port={port}",
        ]
    else:
        cmd += ["--standalone"]
    return cmd + train


def environment(cfg: RunConfig) -> dict:
    """The ranks' environment: threads per rank, and the faster allocator the `ptune` command uses
    (ptune_dist/runtime.py) when one is installed."""
    L = cfg.launch
    threads = L.threads_per_proc or max(1, (os.cpu_count() or 1) // max(1, L.nproc_per_node))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**(allocator_env(env) or env), "OMP_NUM_THREADS": str(threads)}


def run(cfg: RunConfig, config_path: Path) -> int:
    """Start the ranks and wait for them, restarting them after a rank fault within launch.max_restarts
    (restarts.run); returns the status of the last failure when it is not restarted, else the status the ranks
    stopped with (130 Ctrl-C, 99 preempted), else 130/99 when this process was asked to stop but the ranks
    finished first, else 0."""
    return restarts.run(
        lambda made: attempt(cfg, config_path, resume=made > 0), cfg.launch.max_restarts, cfg.output_dir
    )


def attempt(cfg: RunConfig, config_path: Path, resume: bool = False) -> int | restarts.Failure:
    """One start of the ranks (`resume`: from the newest checkpoint): the status they ended with, or how
    they failed (restarts.Failure)."""
    cmd = command(cfg, config_path) + (["train.resume=auto"] if resume else [])
    folder = tempfile.mkdtemp(prefix="ptune-stop-")  # 0700, this call's own: the ranks' stop records
    try:
        env = {**environment(cfg), STOP_RECORD_ENV: folder, restarts.FAILURES_ENV: str(Path(folder) / "failures.json")}
        rc, asked = signals.wait(cmd, env, faults=Path(folder))
        stopped = recorded(Path(folder))
        failures = restarts.read_failures(Path(folder) / "failures.json")
        faults = read_faults(Path(folder))  # what the survivors of a rank fault said (train/peers.py)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if rc != 0 and asked == signal.SIGINT and rc < 0:  # killed on a third Ctrl-C
        return INTERRUPTED
    if rc != 0 and asked is None:
        # nobody asked the ranks to stop: a failure. A stop record then comes from torchrun's TERM to the ranks
        # left after one failed (a checkpoint needs every rank, so none was written on that TERM)
        L = cfg.launch
        return restarts.with_faults(
            restarts.classify(rc, failures, L.nproc_per_node if L.nnodes == 1 else None), faults
        )
    if rc != 0:
        return rc
    if stopped is not None:
        return stopped
    return {signal.SIGINT: INTERRUPTED, signal.SIGTERM: PREEMPTED}.get(asked, 0)
