"""The child process of a trace on a CPU-only torch (started by fake_cuda.run_child with the fake device).

    main(request.json, answer.json) -> exit code

The request holds "steps" and "items": each a run config (YAML), the base's config dict (or null: read
from model.name_or_path) and label_tokens. The answer holds "answers", one per item: {"trace": Trace
fields} or {"error": message, "kind": ConfigError | NotTraceable | RuntimeError}.
"""

from __future__ import annotations

import json
from pathlib import Path


def main(request: str, answer: str) -> int:
    from ptune_dist.config.load import from_yaml
    from ptune_dist.errors import PtuneError

    from . import fake_cuda
    from .trace import trace_here, where

    req = json.loads(Path(request).read_text())
    answers = []
    for item in req["items"]:
        try:
            if not fake_cuda.ready():
                raise RuntimeError("the fake CUDA device did not load (fake_cuda.BOOT)")
            trace = trace_here(from_yaml(item["config"]), item["hf_config"], item["label_tokens"], req["steps"])
            answers.append({"trace": trace.as_dict()})
        except PtuneError as e:
            answers.append({"error": str(e), "kind": type(e).__name__})
        except Exception as e:  # noqa: BLE001  (anything else: its message and where in ptune it happened)
            answers.append({"error": f"{type(e).__name__}: {e} (at {where(e)})", "kind": "RuntimeError"})
    Path(answer).write_text(json.dumps({"answers": answers}))
    return 0
