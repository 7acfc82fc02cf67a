"""The `ptune` command.

    ptune train CONFIG.yaml [MORE.yaml ...] [dotted.key=value ...]
    ptune eval RUN_OR_CHECKPOINT [dotted.key=value ...] | eval RUN1 RUN2 ... --ensemble [dotted.key=value ...]
    ptune predict RUN_OR_CHECKPOINT --input FILE.jsonl [--output FILE.jsonl [--force]] [dotted.key=value ...]
    ptune export CHECKPOINT --format peft --out DIR [--task NAME] [--force]
    ptune import ADAPTER_DIR --out RUN_DIR [--force] [dotted.key=value ...]
    ptune launch CONFIG.yaml [...] [dotted.key=value ...] [--dry-run]      (launch.backend=local|slurm)
    ptune sweep CONFIG.yaml [...] [key=value ...] [--grid key=v1,v2 ...] [--dry-run]
    ptune study CONFIG.yaml [...] [key=value ...] [--dry-run] | study status|report|ensemble STUDY_DIR
    ptune gather SWEEP_DIR
    ptune status RUN_DIR|JOB_ID
    ptune cancel RUN_DIR|JOB_ID
    ptune fetch-models [NAME ...]
    ptune plan CONFIG.yaml [...] [key=value ...] [hardware.gpus=N hardware.gpu_mem=24GB]   (or model=NAME ...)

Nothing a command did not create is deleted or replaced without --force (checkpoint/target.py), and
one `ptune train` at a time writes an output_dir (train/run_lock.py).

Ctrl-C ends every command with one line on stderr and exit status 130, never a traceback: `ptune train`
stops at the end of the step with a checkpoint, and at once on a second press (train/preempt.py);
`ptune launch` and `ptune study` forward it to their ranks and wait for them (launcher/signals.py).
A rank of `ptune train` whose peer died or stopped answering (distributed.timeout_s) ends with one line
naming it and exit status 97, resumable (train/peers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import ptune_dist  # noqa: F401  (sets the oneDNN guard before torch loads)
from ptune_dist.errors import PtuneError
from ptune_dist.train import peers, preempt
from ptune_dist.train.preempt import INTERRUPTED, Preempted, catch_early, release_early


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    files = [a for a in args if "=" not in a]
    return files, [a for a in args if "=" in a]


def cmd_train(ns) -> int:
    from ptune_dist.config import load_config
    from ptune_dist.train.loop import train

    files, overrides = _split(ns.args)
    if not files:
        raise PtuneError("give at least one config file")
    results = train(load_config(files, overrides))
    print(json.dumps({k: v for k, v in results.items() if k in ("baseline", "final")}, indent=1))
    return 0


def cmd_eval(ns) -> int:
    if ns.ensemble:  # RUN1 RUN2 ... [key=value ...]: the runs' prompts scored together, a majority vote
        from ptune_dist.inference_ensemble import evaluate_ensemble

        runs = [ns.checkpoint, *(a for a in ns.overrides if "=" not in a)]
        result = evaluate_ensemble(runs, [a for a in ns.overrides if "=" in a])
        print(json.dumps({k: result[k] for k in ("members", "member_metrics", "ensemble")}, indent=1))
        return 0
    from ptune_dist.inference import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(ns.checkpoint, ns.overrides), indent=1))
    return 0


def cmd_predict(ns) -> int:
    from ptune_dist.inference import predict_file

    predict_file(ns.checkpoint, ns.input, ns.output, ns.overrides, force=ns.force)
    return 0


def cmd_export(ns) -> int:
    from ptune_dist.checkpoint.peft_format import export_peft

    print(export_peft(ns.checkpoint, ns.out, task=ns.task, force=ns.force))
    return 0


def cmd_import(ns) -> int:
    from ptune_dist.checkpoint.peft_format import import_peft

    print(import_peft(ns.adapter, ns.out, ns.overrides, force=ns.force))
    return 0


def cmd_launch(ns) -> int:
    from ptune_dist.launcher.launch import launch

    files, overrides = _split(ns.args)
    if not files:
        raise PtuneError("give at least one config file")
    return launch(files, overrides, dry_run=ns.dry_run)


def cmd_sweep(ns) -> int:
    from ptune_dist.launcher import slurm, sweep

    files, overrides = _split(ns.args)
    cfg, sweep_dir, cells = sweep.prepare(files, overrides, ns.grid, write=not ns.dry_run)
    if ns.dry_run:
        print(
            sweep.array_script(cfg, sweep_dir, len(cells))
            if cfg.launch.backend == "slurm"
            else "\n".join(shlex.join(c["overrides"]) for c in cells)
        )
        return 0
    if cfg.launch.backend == "local":
        failed, stopped = sweep.run_locally(cfg, cells)
        if stopped is not None:  # the running cell checkpointed; rerunning the sweep resumes it
            print(f"ptune sweep: stopped on a signal; rerun the same command to resume ({sweep_dir})", file=sys.stderr)
            return stopped
        print(sweep.gather(sweep_dir))
        return 1 if failed else 0
    record = sweep.submit(cfg, sweep_dir, cells)
    print(
        f"submitted array job {record['job_id']} ({len(cells)} cells) and gather job {record['gather_job_id']}; "
        f"logs: {slurm.log_dir(cfg)}; table: {sweep_dir / 'results.md'}"
    )
    return 0


def cmd_study(ns) -> int:
    from ptune_dist.study import command

    return command.run(ns.args, ns.dry_run)


def cmd_gather(ns) -> int:
    from ptune_dist.launcher.sweep_table import gather

    print(gather(ns.sweep_dir))
    return 0


def cmd_status(ns) -> int:
    from ptune_dist.launcher import slurm

    for line in slurm.status(ns.target):  # scontrol's view, and the restarts a run's record holds
        print(json.dumps(line))
    return 0


def cmd_cancel(ns) -> int:
    from ptune_dist.launcher import slurm

    errors = []
    for job in slurm.job_id_of(ns.target):  # each job, even when an earlier one fails (a sweep has two)
        try:
            slurm.cancel(job)
            print(f"cancelled {job}")
        except PtuneError as e:
            errors.append(str(e))
    if errors:
        raise PtuneError("; ".join(errors))
    return 0


def cmd_fetch(ns) -> int:
    from ptune_dist import embedded

    embedded.fetch_all(ns.names or None)
    return 0


def cmd_plan(ns) -> int:
    from ptune_dist.plan import run

    print(run(list(ns.overrides), trace=ns.trace))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptune", description="Soft-prompt tuning of frozen Hugging Face models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a prompt: CONFIG.yaml [...] [key=value ...]")
    t.add_argument("args", nargs="+")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a run folder or checkpoint, print metrics as JSON")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*")
    e.add_argument(
        "--ensemble",
        action="store_true",
        help="RUN1 RUN2 ...: the runs' prompts on their shared base in one pass, and their majority vote",
    )
    e.set_defaults(fn=cmd_eval)
    pr = sub.add_parser("predict", help="classify or generate for the rows of a JSONL file")
    pr.add_argument("checkpoint")
    pr.add_argument("--input", required=True)
    pr.add_argument("--output", default="-", help="JSONL output (default: stdout)")
    pr.add_argument("overrides", nargs="*")
    pr.add_argument("--force", action="store_true", help="replace an existing --output file")
    pr.set_defaults(fn=cmd_predict)
    x = sub.add_parser("export", help="write a checkpoint as a PEFT adapter")
    x.add_argument("checkpoint")
    x.add_argument("--format", choices=["peft"], default="peft")
    x.add_argument("--out", required=True)
    x.add_argument("--task", default=None, help="which task's prompt (default: the only one)")
    x.add_argument("--force", action="store_true", help="replace what --out holds (never the input itself)")
    x.set_defaults(fn=cmd_export)
    i = sub.add_parser("import", help="turn a PEFT prompt adapter into a ptune run folder")
    i.add_argument("adapter")
    i.add_argument("--out", required=True)
    i.add_argument("overrides", nargs="*")
    i.add_argument("--force", action="store_true", help="replace the run's existing final/")
    i.set_defaults(fn=cmd_import)
    la = sub.add_parser("launch", help="run training on N processes, nodes, or as a Slurm job")
    la.add_argument("args", nargs="+")
    la.add_argument("--dry-run", action="store_true", help="print the command or sbatch script, start nothing")
    la.set_defaults(fn=cmd_launch)
    sw = sub.add_parser("sweep", help="one run per cell of a grid: a Slurm job array plus a gathering job")
    sw.add_argument("args", nargs="+")
    sw.add_argument("--grid", action="append", default=[], help="dotted.key=value1,value2 (repeatable)")
    sw.add_argument("--dry-run", action="store_true")
    sw.set_defaults(fn=cmd_sweep)
    sy = sub.add_parser(
        "study",
        help="the power-of-scale study: a grid of models, methods, prompt lengths, inits, "
        "tasks and seeds, run and reported (or: study status|report|ensemble STUDY_DIR)",
    )
    sy.add_argument("args", nargs="+")
    sy.add_argument("--dry-run", action="store_true", help="check every cell and print them, run nothing")
    sy.set_defaults(fn=cmd_study)
    ga = sub.add_parser("gather", help="collect a sweep's results into results.csv / results.md")
    ga.add_argument("sweep_dir")
    ga.set_defaults(fn=cmd_gather)
    st = sub.add_parser("status", help="state of a submitted run (folder or job id)")
    st.add_argument("target")
    st.set_defaults(fn=cmd_status)
    ca = sub.add_parser("cancel", help="cancel a submitted run (folder or job id)")
    ca.add_argument("target")
    ca.set_defaults(fn=cmd_cancel)
    f = sub.add_parser("fetch-models", help="download and convert the embedded models")
    f.add_argument("names", nargs="*")
    f.set_defaults(fn=cmd_fetch)
    pl = sub.add_parser("plan", help="setups that fit a GPU's memory, with predicted peak memory per device")
    pl.add_argument(
        "overrides",
        nargs="*",
        help="CONFIG.yaml [...] or model=... method=..., then hardware.gpus=N hardware.gpu_mem=24GB key=value ...",
    )
    pl.add_argument(
        "--trace",
        nargs="?",
        type=int,
        const=3,
        default=0,
        metavar="N",
        help="also trace the first N setups listed (default 3): their training step run on a fake CUDA "
        "device, the peak of live GPU tensor bytes by part beside the prediction (plain engine only)",
    )
    pl.set_defaults(fn=cmd_plan)
    return p


def main(argv=None) -> int:
    p = parser()
    ns, extra = p.parse_known_args(argv)
    field = "overrides" if hasattr(ns, "overrides") else "args" if hasattr(ns, "args") else None
    bad = [a for a in extra if "=" not in a or a.startswith("-") or field is None]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:  # key=value overrides may also follow the options
        setattr(ns, field, list(getattr(ns, field)) + extra)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if ns.command == "train":
        catch_early()  # from here a USR1/TERM/INT is recorded, not fatal: training adopts it (train/preempt.py)
    try:
        try:
            return ns.fn(ns)
        except Preempted as e:
            print(f"ptune {ns.command}: {e}", file=sys.stderr)
            return preempt.leave(e.exit_code())  # under `ptune launch`: 0, the status recorded for the launcher
        except peers.RankFault as e:  # a peer died or stopped answering: one line, a resumable status (97)
            print(f"ptune {ns.command}: {e}", file=sys.stderr)
            return peers.leave(e)  # also under `ptune launch`: 97 itself, the line in PTUNE_STOP_RECORD/fault-R
        except PtuneError as e:
            message = " ".join(str(e).split("\n"))  # one line, whatever the message carries
            print(f"ptune {ns.command}: error: {message}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        return _interrupted(ns.command)
    except Exception:
        if preempt.aborted():  # stopping at once: a collective whose peer already left fails on the way out
            return _interrupted(ns.command)
        raise
    finally:
        release_early()  # a no-op once training took the handlers over; an in-process caller gets its own back


def _interrupted(command: str) -> int:
    """One line for a Ctrl-C that ended the command where it was (train/preempt.py: a second press)."""
    if command != "train" or not preempt.aborted():  # not a rank's stop: the command had no step to finish
        print(f"ptune {command}: interrupted (Ctrl-C)", file=sys.stderr)
        return preempt.leave(INTERRUPTED) if command == "train" else INTERRUPTED
    if preempt.is_main_rank():
        print(
            f"ptune {command}: stopped at once on a second Ctrl-C; the steps after the newest checkpoint are lost, "
            "the checkpoint itself is whole: run the same command to resume from it",
            file=sys.stderr,
        )
    return preempt.leave(INTERRUPTED)


def entry() -> None:
    """The console script: under a faster allocator when one is installed (see runtime.py), then main."""
    from ptune_dist.runtime import reexec_with_allocator

    reexec_with_allocator()
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
