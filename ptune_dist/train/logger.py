"""Where training reports go: metrics.jsonl (one JSON object per record), TensorBoard, a progress bar.

Only the main rank writes; the others get a logger that does nothing. A resumed run continues the
same files. metrics.jsonl is append-only: the logger marks where the run resumed and
`metrics_file.read_metrics` drops the records the resumed run does again (the file's rules are in
metrics_file.py). TensorBoard drops them itself (purge_step), so each tells one history.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ptune_dist.nofollow import refuse_link

from .metrics_file import NAME, open_metrics


class MetricsLogger:
    def __init__(
        self, out_dir: Path, enabled: bool, total_steps: int, start_step: int, progress: bool, tensorboard: bool
    ):
        self.enabled = enabled
        self.bar = self.tb = self.file = None
        if not enabled:
            return
        self.file = open_metrics(Path(out_dir) / NAME, start_step)  # writes the resume marker
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                str(refuse_link(Path(out_dir) / "tensorboard")), purge_step=start_step + 1 if start_step else None
            )
        if progress and total_steps:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            prefix = record.get("split", "train")
            if "task" in record:
                prefix += "/" + record["task"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))

    def train(self, record: dict) -> None:
        self.write(record)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}"
            )

    def eval(self, step: int, results: dict, split: str = "eval") -> None:
        """One record per task; split "baseline" is the frozen base without prompt."""
        for task, metrics in results.items():
            self.write({"step": step, "split": split, "task": task, **metrics})
        if self.bar is not None and results:
            self.bar.write(
                f"step {step} {split}: "
                + "; ".join(
                    f"{t}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
                    for t, m in results.items()
                )
            )

    def say(self, line: str) -> None:
        """A line for the person watching (above the progress bar), not for metrics.jsonl."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()
