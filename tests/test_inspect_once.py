"""A run reads its base's config once and resolves its method class once (model/inspect.py,
train/session.py), whatever loads after: the data, the weights, the prompts."""

from pathlib import Path

from ptune_dist.config import load_config
from ptune_dist.model import build, inspect
from ptune_dist.train import session as session_module

MINILM_CONFIG = Path(__file__).parent.parent / "configs" / "minilm_ptuning_v2.yaml"


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_session_reads_the_base_config_once_and_resolves_its_method_once(monkeypatch, tmp_path):
    reads = _counting(monkeypatch, inspect, "load_hf_config")
    resolved = _counting(monkeypatch, session_module, "method_class")
    monkeypatch.setattr(build, "method_class", lambda name: (_ for _ in ()).throw(AssertionError("resolved again")))
    cfg = load_config([MINILM_CONFIG], [f"output_dir={tmp_path}", "train.steps=0", "data.max_eval_examples=4"])
    s = session_module.build_session(cfg, splits=("eval",))
    assert len(reads) == 1, reads
    assert len(resolved) == 1, resolved
    assert s.model.info.num_layers == 6 and s.model.placement.name == "deep"
