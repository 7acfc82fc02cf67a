"""The shipped configs learn for real: P-tuning v2 on MiniLM (seconds), the quickstart on SmolLM2 (minutes)."""

import json
from pathlib import Path

import pytest

from ptune_dist.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"


def test_ptuning_v2_on_minilm_learns_classification(tmp_path):
    assert (
        main(
            [
                "train",
                str(CONFIGS / "minilm_ptuning_v2.yaml"),
                f"output_dir={tmp_path}",
                "train.progress_bar=false",
                "train.eval_every=0",
                "train.tensorboard=false",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("split") == "eval"]
    start, end = evals[0]["accuracy"], evals[-1]["accuracy"]
    assert evals[0]["step"] == 0 and start < 0.6
    assert end >= 0.9, (start, end)


@pytest.mark.slow
def test_quickstart_lifts_the_untuned_score(tmp_path):
    assert main(["train", str(CONFIGS / "quickstart.yaml"), f"output_dir={tmp_path}", "train.progress_bar=false"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    untuned = results["baseline"]["support"]["accuracy"]
    tuned = results["final"]["support"]["accuracy"]
    assert untuned < 0.4 and tuned > 0.75, (untuned, tuned)
