"""The study's report: results.csv rows into report.md (tables) and PNG figures, like Lester et al. 2021.

A row is one cell and task (rows.py); only `done` rows carry a score. Each comparison a row belongs to
(`parts`: main, length, init; any other name is shown under "Other comparisons") gets one table per task,
and, with several tasks, an average: per seed the mean over tasks (only seeds where every task is done),
then mean ± std (sample std) over those seeds. Columns are the models by size; rows the methods in a fixed
order (main), the prompt lengths (length) or the inits (init). A table or figure without data is left out
with a one-line reason. The table functions are pure (header and rows of strings); `write_report` writes
the files, each atomically (nofollow.py write_atomic), the figures first and report.md last.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict, namedtuple
from pathlib import Path
from typing import Iterable, Mapping

from ptune_dist.checkpoint.atomic import umask
from ptune_dist.methods import METHODS
from ptune_dist.methods.config import LABELS, RANDOM, VOCAB
from ptune_dist.nofollow import own_dir, write_atomic

from .ensemble_table import ensemble_section
from .markdown import fmt_count, fmt_pct, fmt_stat, md_table

INIT_ORDER = (RANDOM, VOCAB, LABELS)  # the init vocabulary: ptune_dist/methods/config.py
STATUS_ORDER = ("failed", "running", "pending", "done")  # a cell with rows in several states: the first
# part: (heading, figure file, figure title, legend title)
PARTS = {
    "main": ("Score per method and model size", "scale.png", "Score vs model size", "method"),
    "length": ("Prompt-length ablation", "prompt_length.png", "Prompt length vs model size", "prompt length"),
    "init": ("Prompt-initialization ablation", "init.png", "Prompt initialization vs model size", "init"),
}


# one cell and task, typed: parts a frozenset; model_params, prompt_length, seed, trained_params int or None;
# score a float on done rows (None elsewhere); the rest str
Row = namedtuple(
    "Row", "cell status parts model model_params method prompt_length init task seed trained_params metric score"
)
Table = namedtuple("Table", "header rows")  # header: list[str]; rows: list[list[str]]
Stat = namedtuple("Stat", "mean std seeds")  # std None with one seed; seeds: sorted tuple
# corner: the first column's header; rows: (key, label) in table order; models: (name, params) by size;
# stats: (key, model) -> Stat
Grid = namedtuple("Grid", "corner rows models stats")
_INTS = ("model_params", "prompt_length", "seed", "trained_params")


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v) -> int | None:
    try:
        return int(str(v).strip())
    except ValueError:  # "", "1e6", "12.0"
        f = _float(v)
        return None if f is None else int(f)


def clean_rows(rows: Iterable[Mapping | Row]) -> list[Row]:
    """Rows as read from results.csv (strings) or as gathered (numbers) into typed Rows."""
    out = []
    for r in rows:
        if isinstance(r, Row):
            out.append(r)
            continue
        parts = r.get("parts") or ""
        parts = frozenset(p.strip() for p in (parts.split(";") if isinstance(parts, str) else parts) if p.strip())
        status = str(r.get("status") or "pending").strip().lower()
        text = {k: str(r.get(k) or "").strip() for k in ("cell", "model", "method", "init", "task", "metric")}
        out.append(
            Row(
                status=status,
                parts=parts,
                score=_float(r.get("score")) if status == "done" else None,
                **text,
                **{k: _int(r.get(k)) for k in _INTS},
            )
        )
    return out


def _rank(name: str, order: tuple) -> tuple:
    return (order.index(name) if name in order else len(order), name)


def _method_rank(name: str) -> tuple:
    """(place, name): methods as their classes rank them (methods.base.table_rank), unknown ones last."""
    if name not in METHODS:
        return (2, 0, len(METHODS)), name
    return (*METHODS[name].table_rank(), list(METHODS).index(name)), name


def _models(rows: list[Row]) -> list[tuple[str, int | None]]:
    params: dict[str, int | None] = {}
    for r in rows:
        if params.get(r.model) is None:
            params[r.model] = r.model_params
    return sorted(params.items(), key=lambda mp: (mp[1] is None, mp[1] or 0, mp[0]))


def _tasks(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r.task for r in rows))


def _model_header(name: str, params: int | None) -> str:
    return name if params is None else f"{name} ({fmt_count(params)})"


def _axis(part: str, rows: list[Row]):
    """(key of a row, label of a key, corner header) of a comparison's table rows."""
    several = len({r.method for r in rows}) > 1
    if part == "length":
        return (
            lambda r: (_method_rank(r.method), r.prompt_length if r.prompt_length is not None else -1),
            lambda k: f"{k[0][1]} {k[1]}" if several else str(k[1]),
            "prompt length",
        )
    if part == "init":
        return (
            lambda r: (_method_rank(r.method), _rank(r.init or "(none)", INIT_ORDER)),
            lambda k: f"{k[0][1]} {k[1][1]}" if several else k[1][1],
            "init",
        )
    return lambda r: (_method_rank(r.method),), lambda k: k[0][1], "method"


def grid(rows, part: str, tasks: list[str]) -> Grid:
    """A comparison's numbers over `tasks`: per (row key, model, seed) the mean over tasks where every task
    is done, then mean and sample std over those seeds."""
    sel = [r for r in clean_rows(rows) if part in r.parts]
    key, label, corner = _axis(part, sel)
    per: dict = defaultdict(lambda: defaultdict(list))
    for r in sel:
        if r.score is not None and r.seed is not None and r.task in tasks:
            per[(key(r), r.model, r.seed)][r.task].append(r.score)
    by_seed: dict = defaultdict(dict)
    for (k, model, seed), by_task in per.items():
        if all(t in by_task for t in tasks):
            by_seed[(k, model)][seed] = statistics.fmean(statistics.fmean(by_task[t]) for t in tasks)
    stats = {}
    for km, values in by_seed.items():
        seeds = tuple(sorted(values))
        v = [values[s] for s in seeds]
        stats[km] = Stat(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, seeds)
    return Grid(corner, [(k, label(k)) for k in sorted({key(r) for r in sel})], _models(sel), stats)


def score_table(rows, part: str, tasks: list[str]) -> Table | None:
    """A comparison's table over `tasks` (one task, or several for the average); None without any number.
    `(n=K)` follows every number when the cells of the table do not all have the same seeds."""
    g = grid(rows, part, tasks)
    if not g.stats:
        return None
    show_n = len({s.seeds for s in g.stats.values()}) > 1

    def cell(stat):
        return "-" if stat is None else fmt_stat(stat.mean, stat.std, len(stat.seeds) if show_n else None)

    return Table(
        [g.corner] + [_model_header(m, p) for m, p in g.models],
        [[lab] + [cell(g.stats.get((k, m))) for m, _ in g.models] for k, lab in g.rows],
    )


def params_table(rows) -> Table | None:
    """Parameters each method trains on each model (its main-comparison cells), and as % of the model."""
    main = [r for r in clean_rows(rows) if "main" in r.parts]
    values: dict = defaultdict(set)
    for r in main:
        if r.trained_params is not None:
            values[(r.method, r.model)].add(r.trained_params)
    if not values:
        return None
    models = _models(main)

    def cell(method, model, params):
        v = sorted(values.get((method, model), ()))
        if not v:
            return "-"
        if len(v) > 1:
            return f"{fmt_count(v[0])}–{fmt_count(v[-1])}"
        return fmt_count(v[0]) + (f" ({fmt_pct(100 * v[0] / params)})" if params else "")

    methods = sorted({m for m, _ in values}, key=lambda m: _method_rank(m))
    return Table(
        ["method"] + [_model_header(m, p) for m, p in models],
        [[meth] + [cell(meth, m, p) for m, p in models] for meth in methods],
    )


def status_line(rows) -> str:
    """`Cells: 40 done, 1 failed, 1 pending (42 in all).` (running and other states when there are any)."""
    cells: dict[str, str] = {}
    for r in clean_rows(rows):
        old = cells.get(r.cell)
        cells[r.cell] = r.status if old is None else min(old, r.status, key=lambda s: _rank(s, STATUS_ORDER))
    counts = Counter(cells.values())
    shown = ["done", "failed", "pending"] + sorted(set(counts) - {"done", "failed", "pending"})
    return "Cells: " + ", ".join(f"{counts[s]} {s}" for s in shown) + f" ({len(cells)} in all)."


def _metrics(rows: list[Row]) -> dict[str, str]:
    """Each task's metric name(s), tasks in the order of the rows."""
    return {t: ", ".join(sorted({r.metric for r in rows if r.task == t and r.metric})) for t in _tasks(rows)}


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o666 & ~umask())  # never through a link (refused, naming it)


def _section(rows: list[Row], part: str, out_dir: Path, plots, written: dict) -> list[str]:
    heading, png, fig_title, legend = PARTS.get(part, (f"Other comparisons: {part}", None, "", ""))
    lines = [f"## {heading}", ""]
    sel = [r for r in rows if part in r.parts]
    if not any(r.score is not None for r in sel):
        why = "no cell of it is done yet" if sel else "the study has no cells of it"
        return lines + [f"Left out: {why}." + (f" (table and {png} not written)" if png else ""), ""]
    tasks = _tasks(sel)
    groups = [(f"{t} ({m or 'score'})", [t]) for t, m in _metrics(sel).items()]
    groups += [("Average over tasks", tasks)] if len(tasks) > 1 else []
    for name, over in groups:
        table = score_table(sel, part, over)
        lines += [f"### {name}", ""]
        if table is None:
            lines += ["Left out: " + ("no seed has every task done yet." if len(over) > 1 else "no cell done yet."), ""]
        else:
            note = ["Per seed the mean over tasks, then mean ± std over the seeds where every task is done.", ""]
            lines += (note if len(over) > 1 else []) + [md_table(*table), ""]
    if png is None:
        return lines
    if plots is None:
        return lines + [f"{png} left out: matplotlib is not installed (pip install matplotlib).", ""]
    metrics = sorted({r.metric for r in sel if r.metric})
    y_label = (metrics[0] if len(metrics) == 1 else "score") + (
        f" (mean over {len(tasks)} tasks)" if len(tasks) > 1 else ""
    )
    methods = sorted({r.method for r in sel})
    title = fig_title + (f" ({methods[0]})" if part != "main" and len(methods) == 1 else "")
    fig = plots.grid_spec(grid(sel, part, tasks), title, y_label)
    if not fig["series"]:
        return lines + [f"{png} left out: no model with a known size has a score over every task.", ""]
    _write_atomic(out_dir / png, plots.render_png(fig, legend))
    written[png] = out_dir / png
    return lines + [f"![{fig_title}]({png})", ""]


def write_report(
    rows: list[dict], out_dir: Path, title: str = "Power of scale", ensembles: list[dict] = ()
) -> dict[str, Path]:
    """report.md and the figures (scale.png, prompt_length.png, init.png) into out_dir; {file name: path}
    of what was written. Figures of an earlier report that now have no data are removed. `ensembles`: the
    records of ensemble.py, shown as their own section."""
    out_dir = own_dir(Path(out_dir))  # report/ as a link is refused, not written through
    rows = clean_rows(rows)
    try:
        from . import plots
    except ImportError:
        plots = None
    written: dict[str, Path] = {}
    metrics = "; ".join(f"{t}: {m or 'not known yet'}" for t, m in _metrics(rows).items())
    lines = [
        f"# {title}",
        "",
        status_line(rows),
        "",
        f"Score of each task: {metrics}.",
        "",
        "Numbers are mean ± std over seeds (sample std; `± -` with one seed); `(n=K)` gives the number of "
        "seeds when the cells of a table have different seeds; `-`: no done cell.",
        "",
    ]
    failed = sorted({r.cell for r in rows if r.status == "failed"})
    if failed:
        lines += [f"Failed: {', '.join(failed[:10])}" + (", ..." if len(failed) > 10 else "") + ".", ""]
    others = sorted({p for r in rows for p in r.parts} - set(PARTS))
    for part in [*PARTS, *others]:
        lines += _section(rows, part, out_dir, plots, written)
    lines += ensemble_section(list(ensembles), dict(_models(rows)))
    lines += ["## Parameters trained", ""]
    table = params_table(rows)
    lines += [md_table(*table) if table else "Left out: no cell reports its trained parameters yet.", ""]
    for _, png, _, _ in PARTS.values():
        if png not in written and not (out_dir / png).is_symlink():
            (out_dir / png).unlink(missing_ok=True)
    _write_atomic(out_dir / "report.md", "\n".join(lines).encode("utf-8"))
    return {"report.md": out_dir / "report.md", **written}
