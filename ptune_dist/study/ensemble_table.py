"""The report's prompt-ensemble section (Lester et al. 2021, Table 3), from the ensembles/*.json records that
ensemble.py writes: per task one table, a row per model by size: the members' mean ± std and best, and the
majority vote of all of them. Pure strings, no files; no torch."""

from __future__ import annotations

import statistics

from .markdown import fmt_count, fmt_stat, md_table

COLUMNS = ["model", "prompts", "members: mean ± std", "best member", "ensemble (majority vote)"]


def ensemble_tables(records: list[dict], sizes: dict[str, int | None]) -> list[tuple[str, tuple]]:
    """[(task heading, (header, rows))] for every task with an ensemble; models in order of size."""
    out = []
    for task in dict.fromkeys(r["task"] for r in records):
        mine = [r for r in records if r["task"] == task]
        mine.sort(key=lambda r: (sizes.get(r["model"]) is None, sizes.get(r["model"]) or 0, r["model"]))
        rows = []
        for r in mine:
            scores = r["member_scores"]
            std = statistics.stdev(scores) if len(scores) > 1 else None
            size = sizes.get(r["model"])
            rows.append(
                [
                    r["model"] + (f" ({fmt_count(size)})" if size else ""),
                    str(len(scores)),
                    fmt_stat(statistics.fmean(scores), std),
                    f"{max(scores):.3f}",
                    f"{r['score']:.3f}",
                ]
            )
        out.append((f"{task} ({mine[0]['metric']})", (COLUMNS, rows)))
    return out


def ensemble_section(records: list[dict], sizes: dict[str, int | None]) -> list[str]:
    lines = ["## Prompt ensembles", ""]
    if not records:
        return lines + [
            "Left out: no ensemble yet (it needs the main setting of the ablation method done for at "
            "least three seeds of a model and classification task; `ptune study ensemble DIR`).",
            "",
        ]
    first = records[0]
    lines += [
        f"{first['method']} at length {first['prompt_length']}, init {first['init']}: the prompts of every "
        "seed scored together in one batch on one frozen base, each example's class by majority vote "
        "(Lester et al. 2021, Table 3).",
        "",
    ]
    for heading, table in ensemble_tables(records, sizes):
        lines += [f"### {heading}", "", md_table(*table), ""]
    return lines
