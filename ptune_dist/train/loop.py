"""`ptune train`: the training loop, the same on every rank.

output_dir/config.yaml          the resolved config
output_dir/metrics.jsonl        train records (step, loss, lr, tokens_per_s, grad_norm) and eval records
output_dir/checkpoints/step-N/  resumable checkpoints of the engine, the data order and the RNG (atomic;
                                checkpoint/checkpointer.py saves and restores those parts)
output_dir/final/               the trained weights, for eval, predict and export
output_dir/results.json         final (and baseline) metrics
"""

from __future__ import annotations

import json
import random
import resource
import time
from contextlib import closing
from functools import partial
from pathlib import Path

import torch

from ptune_dist.checkpoint import folder_rule
from ptune_dist.checkpoint import state as ckpt
from ptune_dist.checkpoint.checkpointer import Checkpointer
from ptune_dist.config import to_yaml
from ptune_dist.config.schema import RunConfig
from ptune_dist.data.loader import TrainLoader
from ptune_dist.data.packed_loader import PackedTrainLoader
from ptune_dist.device import describe, peak_bytes
from ptune_dist.errors import ConfigError
from ptune_dist.nofollow import write_atomic
from ptune_dist.rank_env import DistEnv

from . import dist, peers
from .engine import TorchEngine
from .evaluate import evaluate
from .keep_trained import refuse_less_trained
from .logger import MetricsLogger
from .nonfinite import NonFiniteGuard
from .optim import build_optimizer, build_scheduler
from .params import param_bytes, param_counts
from .preempt import Preempted, StopRequests
from .prefetch import Prefetch
from .resume import agreed_resume_point, config_changes
from .rng import RankRng
from .run_lock import RunLock
from .session import Session, baseline_view, build_session
from .update import update

CARRIED = ("baseline",)  # results measured once, before step 1, that checkpoints keep for a resumed run


def train(cfg: RunConfig) -> dict:
    # signals from the start: an early USR1 (Slurm sends it up to a minute early) must not kill a rank;
    # the folder rule, then the lock, before any work: a folder holding someone else's files, or a second
    # run on this output_dir, stops here, touching nothing; so does a run that would replace a more trained
    # final/ (keep_trained.py)
    is_main = DistEnv.from_environ().is_main
    with StopRequests() as stop:
        if is_main:
            folder_rule.check_folder(cfg.output_dir, folder_rule.TRAIN)
            refuse_less_trained(cfg.output_dir, cfg.train.steps)
        with RunLock(cfg.output_dir, held=is_main):
            if stop.requested:  # a signal during the imports (preempt.catch_early): leave before loading anything
                raise Preempted(None, is_main, stop.signum)
            with peers.watched():  # a peer that dies or stops answering: one line naming it (peers.py)
                return train_run(cfg, stop)


def train_run(cfg: RunConfig, stop: StopRequests) -> dict:
    s = build_session(cfg)
    cfg, model, env, t = s.cfg, s.model, s.env, s.cfg.train
    peers.start(env, cfg.distributed.timeout_s)  # this rank's heartbeat, read by a peer that loses it
    out = Path(cfg.output_dir)
    engine, checkpointer, start, changes = None, None, 0, {}
    results = {"method": cfg.method.name, "model": cfg.model.name_or_path, "device": describe(s.device)}
    random.seed(t.seed + env.rank)  # dropout and anything else random: reproducible per rank
    torch.manual_seed(t.seed + env.rank)
    if t.steps:
        engine, loader = make_engine(s), make_loader(s)
        checkpointer = make_checkpointer(s, engine, loader)
        resume_from = agreed_resume_point(t.resume, out, env.is_main, checkpointer.read)
        if resume_from:
            changes = config_changes(resume_from, cfg)  # refuses before anything is loaded
            saved = checkpointer.load(resume_from)
            start = saved.step
            results.update({k: saved.state[k] for k in CARRIED if k in saved.state})
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = MetricsLogger(out, env.is_main, t.steps, start, t.progress_bar, t.tensorboard)  # metrics.jsonl first:
    if env.is_main:  # it marks the folder as this run's (checkpoint/folder_rule.py) before config.yaml is there
        write_atomic(out / "config.yaml", to_yaml(cfg))  # never through a link (refused, naming it)
    run_eval = partial(
        evaluate,
        batch_size=cfg.data.eval_batch_size,
        pad_id=s.pad_id,
        padding_side=cfg.data.padding_side,
        rank=env.rank,
        world=env.world,
        device=s.device,
        pack_to=cfg.data.max_length if cfg.data.packing else None,
    )
    ran_on = results["device"]
    log.write({"event": "device", "step": start, **ran_on, "per_rank": dist.gather_objects(str(s.device))})
    log.say(f"ptune: rank 0 of {env.world} trains on {ran_on['device']} {ran_on.get('name', '')}".rstrip())
    held = dist.gather_objects(param_bytes(model))  # every rank: what it holds of the model
    results["parameters"] = param_counts(model, t.steps)  # for tables of scale: the base's size, what trains
    log.write({"event": "parameters", "step": start, "bytes_per_rank": [h for h, _ in held], "bytes_total": held[0][1]})
    if changes:
        log.write({"event": "config_changed", "step": start, "applied": {k: list(v) for k, v in changes.items()}})
        log.say(
            "ptune: resuming with changed settings: "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        )
    if t.eval_baseline and not start and model.placement.learned:
        results["baseline"] = run_eval(*baseline_view(s))
        log.eval(0, results["baseline"], split="baseline")
    if t.eval_at_start and not start:
        log.eval(0, run_eval(model, s.tasks))

    carried = {k: results[k] for k in CARRIED if k in results}
    save = partial(checkpointer.save, extra=carried) if checkpointer else None  # every rank: the parts gather
    if engine is not None:
        run_steps(s, engine, loader, start, log, partial(run_eval, model, s.tasks), stop, save)
    peers.at(t.steps, "final")
    results["final"] = run_eval(model, s.tasks)
    log.eval(t.steps, results["final"])
    peaks = dist.gather_objects(
        (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
            peak_bytes(s.device),
        )
    )
    log.write(
        {
            "event": "memory",
            "step": t.steps,
            "peak_rss_bytes_per_rank": [rss for rss, _ in peaks],
            **({"peak_gpu_bytes_per_rank": [gpu for _, gpu in peaks]} if peaks[0][1] is not None else {}),
        }
    )
    if t.steps and start < t.steps:
        save(t.steps)
    weights = engine.full_weights() if engine else ckpt.trainable_state(model)  # every rank: may gather
    if env.is_main:
        ckpt.save(out / "final", to_yaml(cfg), weights, step=t.steps, extra={"metrics": results["final"]})
        write_json(out / "results.json", results)
    log.close()
    dist.barrier()
    return results


def run_steps(s: Session, engine, loader, start: int, log: MetricsLogger, run_eval, stop: StopRequests, save) -> None:
    """Steps start+1 .. train.steps. Between the steps that log, evaluate or save, a step asks the device for
    nothing: the batches come described and pinned (prefetch.py), the loss weights are host numbers, and the
    gradient norms and losses stay on the device until the guard reads them (nonfinite.py)."""
    model, t, world = s.model, s.cfg.train, s.env.world
    losses, tokens, t0 = [], 0, time.perf_counter()
    guard = NonFiniteGuard(t.on_nonfinite, t.max_skipped_steps, log)
    if stop.agreed():  # a signal while the run was loading: stop before the first step, resumable
        log.close()
        raise Preempted(start, s.env.is_main, stop.signum)
    model.train()
    with closing(iter(loader)) as updates:
        for step in range(start + 1, t.steps + 1):
            peers.at(step)  # where this rank is, for its heartbeat (a dict update)
            lr = engine.lr
            step_loss, grad_norm, n = update(engine, next(updates), world, s.device)  # built ahead, on the host
            guard.record(step, grad_norm, step_loss)  # NaN norm: non-finite, nothing updated
            tokens += n
            logs, evals = step % t.log_every == 0 or step == t.steps, t.eval_every and step % t.eval_every == 0
            saves, stopping = t.save_every and step % t.save_every == 0, stop.agreed() and step < t.steps
            if logs or evals or saves or stopping:  # the host reads the steps since the last read
                losses += guard.settle()
            if logs and losses:
                mean = sum(loss for _, _, loss in losses) / len(losses)  # each the update's mean (loss_weights.py)
                elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
                mean = float(dist.all_reduce_sum(torch.tensor(mean, dtype=torch.float64))) / world
                log.train(
                    {
                        "step": step,
                        "loss": mean,
                        "lr": lr,
                        "tokens_per_s": tokens * world / elapsed,
                        "grad_norm": losses[-1][1],
                        "epoch": loader.epoch,
                    }
                )
                losses, tokens = [], 0
            log.advance()
            if stopping:  # USR1/TERM/INT on any rank: all stop here, resumable
                peers.at(step, "save")
                save(step)
                log.close()
                raise Preempted(step, s.env.is_main, stop.signum)
            if evals and step < t.steps:
                peers.at(step, "eval")
                log.eval(step, run_eval())
            if saves and step < t.steps:
                peers.at(step, "save")
                save(step)


def make_engine(s: Session):
    params = s.model.trainable_parameters()
    if not params:
        raise ConfigError(f"method.name={s.cfg.method.name} has nothing to train; set train.steps=0")
    t = s.cfg.train
    optimizer = build_optimizer(params.values(), t)
    if s.cfg.distributed.engine == "deepspeed":
        from .ds_engine import DeepSpeedEngine, ds_config

        config = ds_config(s.cfg.distributed, t, s.cfg.data.batch_size, s.env.world)
        return DeepSpeedEngine(s.model, optimizer, lambda opt: build_scheduler(opt, t), config, t.max_grad_norm)
    return TorchEngine(s.model, optimizer, build_scheduler(optimizer, t), t.max_grad_norm)


def make_loader(s: Session) -> Prefetch:
    """The training order (data/loader.py, packed_loader.py), its updates made ready ahead (prefetch.py)."""
    examples = [ex for task in s.tasks for ex in task.train]
    if not examples:
        raise ConfigError("tasks.*.train: no training data, but train.steps > 0")
    d = s.cfg.data
    try:
        if d.packing:  # a row holds what one example may: data.max_length, less a deep prefix
            loader = PackedTrainLoader(
                examples,
                d.batch_size,
                s.cfg.train.seed,
                s.pad_id,
                s.model.row_capacity(d.max_length),
                s.env.rank,
                s.env.world,
            )
        else:
            loader = TrainLoader(
                examples, d.batch_size, s.cfg.train.seed, s.pad_id, d.padding_side, s.env.rank, s.env.world
            )
    except ValueError as e:
        raise ConfigError(f"data.batch_size: {e}") from None
    return Prefetch(loader, [task.spec.type for task in s.tasks], s.device, s.cfg.train.grad_accum)


def make_checkpointer(s: Session, engine, loader: Prefetch) -> Checkpointer:
    """checkpoints/step-N of the run's three parts: the engine, the data order, every rank's RNG."""
    return Checkpointer(
        Path(s.cfg.output_dir) / "checkpoints",
        engine=engine,
        loader=loader,
        rng=RankRng(s.env.rank),
        config_yaml=to_yaml(s.cfg),
        keep=s.cfg.train.keep_checkpoints,
        is_main=s.env.is_main,
        barrier=dist.barrier,
    )


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1))
