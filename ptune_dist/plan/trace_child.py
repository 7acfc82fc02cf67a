"""The child process of a trace on a CPU-only torch (started by fake_cuda.run_child with the fake device).

    main(request.json, answer.json) -> exit code

The request holds the run config (YAML), the base's config dict, label_tokens and steps; the answer is
{"trace": Trace fields} or {"error": message, "kind": exception class name}.
"""

from __future__ import annotations

import json
from pathlib import Path


def main(request: str, answer: str) -> int:
    from ptune_dist.config.load import from_yaml
    from ptune_dist.errors import PtuneError

    from . import fake_cuda
    from .trace import trace_here

    req = json.loads(Path(request).read_text())
    try:
        if not fake_cuda.ready():
            raise RuntimeError("the fake CUDA device did not load (fake_cuda.BOOT)")
        trace = trace_here(from_yaml(req["config"]), req["hf_config"], req["label_tokens"], req["steps"])
        out = {"trace": trace.as_dict()}
    except PtuneError as e:
        out = {"error": str(e), "kind": type(e).__name__}
    Path(answer).write_text(json.dumps(out))
    return 0
