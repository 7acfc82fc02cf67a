"""The `ptune study` command: its three forms (see the package docstring)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from ptune_dist.errors import ConfigError
from ptune_dist.launcher import grid_queue
from ptune_dist.launcher.grid_cells import STATES, cell_dir, state

from .folder import read_cells


def run(args: list[str], dry_run: bool = False) -> int:
    if args[0] in ("status", "report", "ensemble"):
        if len(args) != 2 or dry_run:
            raise ConfigError(f"usage: ptune study {args[0]} STUDY_DIR")
        return {"status": status, "report": report, "ensemble": ensemble}[args[0]](Path(args[1]))
    from .cell_configs import resolve_study

    files, overrides = [a for a in args if "=" not in a], [a for a in args if "=" in a]
    cfg, study_dir, cells, configs = resolve_study(files, overrides, write=not dry_run)
    if dry_run:
        for cell in cells:
            planned = f"  {cell['resources']['label']}" if "resources" in cell else ""  # study.hardware
            print(f"{cell['id']}  [{', '.join(cell['parts'])}]{planned}")
        print(f"{len(cells)} cells into {study_dir}", file=sys.stderr)
        return 0
    if cfg.launch.backend == "slurm":
        from ptune_dist.launcher.grid_arrays import submit

        record = submit(
            cfg, study_dir, cells, configs, kind="study", gather="study report", gather_file="report.sbatch"
        )
        arrays = ", ".join(f"{a['job_id']} ({a['cells']} cells)" for a in record["arrays"]) or "none"
        print(f"submitted arrays {arrays}; report job {record.get('gather_job_id', '-')}: {study_dir / 'report'}")
        return 0
    try:
        missing = grid_queue.run_queue(study_dir, cells, cfg.study.retries, command="ptune study")
    except grid_queue.Stopped as e:  # a Ctrl-C: the running cell saved its checkpoint; nothing else starts
        print(f"ptune study: {e}", file=sys.stderr)
        return e.code
    ensemble(study_dir, report_after=False)
    report(study_dir)
    if missing:
        print(
            f"ptune study: {len(missing)} of {len(cells)} cells not done ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); run the same command again to retry them",
            file=sys.stderr,
        )
    return 1 if missing else 0


def status(study_dir: Path) -> int:
    cells = read_cells(study_dir)
    states = {c["id"]: state(cell_dir(study_dir, c["id"])) for c in cells}
    counts = Counter(states.values())
    print(f"{study_dir}: {len(cells)} cells: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    for cell_id, s in states.items():
        if s != "done":
            print(f"  {s:8} {cell_id}")
    return 0


def ensemble(study_dir: Path, report_after: bool = True) -> int:
    """The prompt ensembles the done cells allow (ensemble.py), then the report again."""
    from .ensemble import run_ensembles

    read_cells(study_dir)  # a study folder: names the problem otherwise
    for path in run_ensembles(study_dir):
        print(path)
    return report(study_dir) if report_after else 0


def report(study_dir: Path) -> int:
    from .ensemble import read_ensembles
    from .report import write_report
    from .rows import write_rows

    csv_path, rows = write_rows(study_dir)
    paths = write_report(rows, study_dir / "report", ensembles=read_ensembles(study_dir))
    print(csv_path)
    print(paths.get("report.md", study_dir / "report" / "report.md"))
    return 0
