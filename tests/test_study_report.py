"""study/report.py and study/plots.py: synthetic results.csv rows with known scores through write_report, then
report.md's tables and the PNGs' `ptune-series` chunks read back and compared with numbers computed here."""

import csv
import json
import statistics
import sys
import zlib

import pytest
from PIL import Image

from ptune_dist.study.markdown import fmt_count, fmt_pct
from ptune_dist.study.report import write_report

COLUMNS = [
    "cell",
    "status",
    "parts",
    "model",
    "model_params",
    "method",
    "prompt_length",
    "init",
    "task",
    "seed",
    "trained_params",
    "metric",
    "score",
]
MODELS = {
    "qwen2.5-0.5b": (494_032_768, 896, 24),
    "all-minilm-l6-v2": (22_713_216, 384, 6),
    "smollm2-135m": (134_515_008, 576, 30),
}  # params, hidden, layers; not in size order on purpose
BY_SIZE = ["all-minilm-l6-v2", "smollm2-135m", "qwen2.5-0.5b"]
HEADER = ["all-minilm-l6-v2 (22.7M)", "smollm2-135m (135M)", "qwen2.5-0.5b (494M)"]
METHODS = ["full_finetune", "prompt_tuning", "p_tuning_v2", "prompt_design", "prefix_tuning"]
ORDER = ["prompt_design", "prompt_tuning", "prefix_tuning", "p_tuning_v2", "full_finetune"]
TASKS, SEEDS = ["sst2", "rte"], [0, 1, 2]
FAILED = ("qwen2.5-0.5b", "prefix_tuning", 20, "labels", "rte", 2)
PENDING = ("qwen2.5-0.5b", "full_finetune", 0, "", "rte", 2)


def score(key) -> float:
    """A known score; a multiple of 1/2048, so sums and means over two tasks are exact in floating point."""
    return 0.4 + (zlib.crc32(repr(key).encode()) % 1024) / 2048


def trained(model, method, length) -> int:
    params, hidden, layers = MODELS[model]
    return {"prompt_design": 0, "full_finetune": params, "prompt_tuning": length * hidden}.get(
        method, length * layers * 2 * hidden
    )


def cells():
    """{(model, method, length, init, task, seed): parts} of the study: main, length (1, 5, 100 besides 20), init."""
    out = {}
    for model in MODELS:
        for task in TASKS:
            for seed in SEEDS:
                for method in METHODS:
                    base = method in ("prompt_design", "full_finetune")
                    key = (model, method, 0 if base else 20, "" if base else "labels", task, seed)
                    out[key] = ["main"] + ([] if method != "prompt_tuning" else ["length", "init"])
                for length in (100, 1, 5):
                    out[(model, "prompt_tuning", length, "labels", task, seed)] = ["length"]
                for init in ("vocab", "random"):
                    out[(model, "prompt_tuning", 20, init, task, seed)] = ["init"]
    return out


def make_rows(study: dict) -> list[dict]:
    rows = []
    for key, parts in study.items():
        model, method, length, init, task, seed = key
        status = "failed" if key == FAILED else "pending" if key == PENDING else "done"
        row = {
            "cell": "__".join(map(str, key)),
            "status": status,
            "parts": ";".join(parts),
            "model": model,
            "method": method,
            "prompt_length": length,
            "init": init,
            "task": task,
            "seed": seed,
        }
        if status == "done":  # as gather.py writes them: only done rows carry numbers
            row.update(
                model_params=MODELS[model][0],
                trained_params=trained(model, method, length),
                metric="accuracy",
                score=score(key),
            )
        rows.append(row)
    return rows


def through_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected(study, model, method, length, init, tasks):
    """Per seed (every task done) the mean over tasks, computed here with statistics.mean."""
    done = {k for k in study if k not in (FAILED, PENDING)}
    keys = [[(model, method, length, init, t, s) for t in tasks] for s in SEEDS]
    return [statistics.mean(score(k) for k in ks) for ks in keys if all(k in done for k in ks)]


def shown(values, with_n=False) -> str:
    std = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"
    return f"{statistics.mean(values):.3f} ± {std}" + (f" (n={len(values)})" if with_n else "")


def parse_tables(md: str) -> dict:
    """{(## heading, ### heading): (header, {row label: {column: cell}}, row labels)} of report.md."""
    out, h2, h3, block = {}, "", "", []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if block:
            header, body = block[0], block[2:]
            out[(h2, h3)] = (header, {r[0]: dict(zip(header, r)) for r in body}, [r[0] for r in body])
            block = []
        if line.startswith("## "):
            h2, h3 = line[3:], ""
        elif line.startswith("### "):
            h3 = line[4:]
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    study = cells()
    rows = through_csv(make_rows(study), out / "results.csv")
    paths = write_report(rows, out / "report")
    md = paths["report.md"].read_text()
    return study, paths, md, parse_tables(md)


def test_summary_lines_and_files(report):
    _, paths, md, _ = report
    assert set(paths) == {"report.md", "scale.png", "prompt_length.png", "init.png"}
    assert all(p.is_file() for p in paths.values())
    assert not [p for p in paths["report.md"].parent.iterdir() if p.name.startswith(".")]  # no temporary left
    assert "Cells: 178 done, 1 failed, 1 pending (180 in all)." in md.splitlines()
    assert "Score of each task: sst2: accuracy; rte: accuracy." in md.splitlines()
    assert "__".join(map(str, FAILED)) in md
    for png in ("scale.png", "prompt_length.png", "init.png"):
        assert f"]({png})" in md


def test_main_tables(report):
    study, _, _, tables = report
    for h3, tasks, with_n in (
        ("sst2 (accuracy)", ["sst2"], False),  # every cell has seeds 0, 1, 2
        ("rte (accuracy)", ["rte"], True),  # the failed and pending cells' seed is missing
        ("Average over tasks", TASKS, True),
    ):
        header, body, order = tables[("Score per method and model size", h3)]
        assert header == ["method"] + HEADER and order == ORDER
        for method in ORDER:
            base = method in ("prompt_design", "full_finetune")
            for model, column in zip(BY_SIZE, HEADER):
                values = expected(study, model, method, 0 if base else 20, "" if base else "labels", tasks)
                assert body[method][column] == shown(values, with_n), (h3, method, model)
    avg = tables[("Score per method and model size", "Average over tasks")][1]
    assert avg["prefix_tuning"]["qwen2.5-0.5b (494M)"].endswith("(n=2)")  # seed 2's rte failed


def test_ablation_tables(report):
    study, _, _, tables = report
    for h2, labels, key in (
        ("Prompt-length ablation", ["1", "5", "20", "100"], lambda x: (int(x), "labels")),
        ("Prompt-initialization ablation", ["random", "vocab", "labels"], lambda x: (20, x)),
    ):
        for h3, tasks in (("sst2 (accuracy)", ["sst2"]), ("rte (accuracy)", ["rte"]), ("Average over tasks", TASKS)):
            header, body, order = tables[(h2, h3)]
            assert header[1:] == HEADER and order == labels
            for label in labels:
                for model, column in zip(BY_SIZE, HEADER):
                    assert body[label][column] == shown(expected(study, model, "prompt_tuning", *key(label), tasks))


def test_params_table(report):
    header, body, order = report[3][("Parameters trained", "")]
    assert header == ["method"] + HEADER and order == ORDER
    assert body["prompt_design"][HEADER[1]] == "0 (0%)"
    assert body["prompt_tuning"][HEADER[1]] == "11.5K (0.0086%)"  # 20 x 576
    assert body["prefix_tuning"][HEADER[1]] == "691K (0.51%)"  # 20 x 30 layers x 2 x 576
    assert body["p_tuning_v2"][HEADER[0]] == "92.2K (0.41%)"  # 20 x 6 x 2 x 384
    assert body["full_finetune"][HEADER[1]] == "135M (100%)"
    assert body["full_finetune"][HEADER[2]] == "494M (100%)"
    assert fmt_count(81_920) == "81.9K" and fmt_pct(100 * 81_920 / 134_515_008) == "0.06%"
    assert [fmt_count(n) for n in (0, 999, 1000, 999_999, 1_710_000_000)] == ["0", "999", "1K", "1M", "1.71B"]


def check_png(path, title_has, labels, points):
    """The PNG is a real picture and its series are `points`: {label: (x, per-seed values)}."""
    with Image.open(path) as im:
        spec = json.loads(im.text["ptune-series"])
        assert 500 <= im.width <= 2000 and 300 <= im.height <= 1500
        assert len(set(im.convert("RGB").getdata())) > 50
    assert title_has in spec["title"] and spec["x_log"] is True and spec["x_label"] == "model parameters"
    assert spec["y_label"] == "accuracy (mean over 2 tasks)"
    assert [s["label"] for s in spec["series"]] == labels
    for s in spec["series"]:
        xs, per_model = points[s["label"]]
        assert s["x"] == xs
        means = [statistics.mean(v) for v in per_model]
        stds = [statistics.stdev(v) for v in per_model]
        assert s["y"] == pytest.approx(means, abs=1e-12)
        assert s["lo"] == pytest.approx([m - d for m, d in zip(means, stds)], abs=1e-12)
        assert s["hi"] == pytest.approx([m + d for m, d in zip(means, stds)], abs=1e-12)


def test_plots(report):
    study, paths, _, _ = report
    xs = [MODELS[m][0] for m in BY_SIZE]

    def line(method, length, init):
        return xs, [expected(study, m, method, length, init, TASKS) for m in BY_SIZE]

    check_png(
        paths["scale.png"],
        "model size",
        ORDER,
        {m: line(m, 0, "") if m in ("prompt_design", "full_finetune") else line(m, 20, "labels") for m in ORDER},
    )
    check_png(
        paths["prompt_length.png"],
        "Prompt length",
        ["1", "5", "20", "100"],
        {str(n): line("prompt_tuning", n, "labels") for n in (1, 5, 20, 100)},
    )
    check_png(
        paths["init.png"],
        "initialization",
        ["random", "vocab", "labels"],
        {i: line("prompt_tuning", 20, i) for i in ("random", "vocab", "labels")},
    )


def small_rows():
    """One seed, one task, main only; a 1.7B model with nothing done; an ensemble row (an unknown part)."""
    rows = [
        {
            "cell": f"{m}-{meth}",
            "status": "done",
            "parts": "main",
            "model": m,
            "model_params": MODELS[m][0],
            "method": meth,
            "prompt_length": 20,
            "init": "labels",
            "task": "sst2",
            "seed": 0,
            "trained_params": trained(m, meth, 20),
            "metric": "accuracy",
            "score": score((m, meth)),
        }
        for m in ("smollm2-135m", "all-minilm-l6-v2")
        for meth in ("prompt_tuning", "prompt_design")
    ]
    rows.append(
        {
            "cell": "big",
            "status": "running",
            "parts": "main",
            "model": "smollm2-1.7b",
            "method": "prompt_tuning",
            "prompt_length": 20,
            "init": "labels",
            "task": "sst2",
            "seed": 0,
        }
    )
    rows.append(
        {**rows[0], "cell": "ens", "parts": "ensemble", "method": "prompt_tuning (ensemble of 3)", "score": 0.75}
    )
    return rows


def test_one_seed_missing_model_no_ablations(tmp_path):
    rows = through_csv(small_rows(), tmp_path / "results.csv")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "init.png").write_bytes(b"stale")  # an earlier report's figure, now without data
    paths = write_report(rows, tmp_path / "report", title="Small study")
    md = paths["report.md"].read_text()
    tables = parse_tables(md)
    assert set(paths) == {"report.md", "scale.png"} and not (tmp_path / "report" / "init.png").exists()
    assert md.startswith("# Small study\n")
    assert "Cells: 5 done, 0 failed, 0 pending, 1 running (6 in all)." in md
    header, body, order = tables[("Score per method and model size", "sst2 (accuracy)")]
    assert header == ["method", "all-minilm-l6-v2 (22.7M)", "smollm2-135m (135M)", "smollm2-1.7b"]
    assert order == ["prompt_design", "prompt_tuning"]
    assert body["prompt_tuning"]["smollm2-135m (135M)"] == f"{score(('smollm2-135m', 'prompt_tuning')):.3f} ± -"
    assert body["prompt_tuning"]["smollm2-1.7b"] == "-" and body["prompt_design"]["smollm2-1.7b"] == "-"
    assert ("Score per method and model size", "Average over tasks") not in tables  # one task: no average
    sections = md.split("\n## ")
    for heading, png in (
        ("Prompt-length ablation", "prompt_length.png"),
        ("Prompt-initialization ablation", "init.png"),
    ):
        (text,) = [s for s in sections if s.startswith(heading)]
        assert f"Left out: the study has no cells of it. (table and {png} not written)" in text
        assert "|" not in text and f"]({png})" not in md
    ens = tables[("Other comparisons: ensemble", "sst2 (accuracy)")]
    assert ens[2] == ["prompt_tuning (ensemble of 3)"] and ens[1][ens[2][0]]["smollm2-135m (135M)"] == "0.750 ± -"
    with Image.open(paths["scale.png"]) as im:
        spec = json.loads(im.text["ptune-series"])
    assert spec["y_label"] == "accuracy" and [s["label"] for s in spec["series"]] == ["prompt_design", "prompt_tuning"]
    assert spec["series"][1]["lo"] == spec["series"][1]["y"] == spec["series"][1]["hi"]  # one seed: no band
    assert spec["series"][1]["x"] == [22_713_216, 134_515_008]  # the 1.7B model has no point


def test_crash_leaves_the_old_report(tmp_path, monkeypatch):
    from ptune_dist.study import plots

    rows = through_csv(small_rows(), tmp_path / "results.csv")
    write_report(rows, tmp_path / "r")
    before = (tmp_path / "r" / "report.md").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(plots, "render_png", boom)
    with pytest.raises(RuntimeError):
        write_report(rows[:1], tmp_path / "r")
    assert (tmp_path / "r" / "report.md").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.md", "scale.png"]


def test_without_matplotlib(tmp_path, monkeypatch):
    import ptune_dist.study

    monkeypatch.setitem(sys.modules, "ptune_dist.study.plots", None)  # `from . import plots` fails
    monkeypatch.delattr(ptune_dist.study, "plots", raising=False)
    paths = write_report(through_csv(small_rows(), tmp_path / "results.csv"), tmp_path / "r")
    assert set(paths) == {"report.md"}
    assert "scale.png left out: matplotlib is not installed" in paths["report.md"].read_text()
