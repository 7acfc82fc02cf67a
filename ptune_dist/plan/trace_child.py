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

    from . import fake_cuda
    from .trace import Trace, traced

    req = json.loads(Path(request).read_text())
    answers = []
    for item in req["items"]:
        if fake_cuda.ready():
            result = traced(from_yaml(item["config"]), item["hf_config"], item["label_tokens"], req["steps"])
        else:
            result = RuntimeError("the fake CUDA device did not load (fake_cuda.BOOT)")
        answers.append(
            {"trace": result.as_dict()}
            if isinstance(result, Trace)
            else {"error": str(result), "kind": type(result).__name__}
        )
    Path(answer).write_text(json.dumps({"answers": answers}))
    return 0
