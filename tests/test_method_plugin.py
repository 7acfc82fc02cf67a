"""A method is one file and one registry line: two test-only methods (tests/plugin_methods/), registered at
run time with ptune_dist.methods.register, go through everything ptune does with a method, no other file
touched:

- lora_prompt (a shallow prompt with a knob of its own, method.rank) trains, checkpoints, resumes exactly
  after a crash, evaluates from its checkpoint, plans (`ptune plan`'s functions count its parameters from
  its own config), is refused by PEFT export with a clear message, and its knob is an error for another method;
- kv_scales (a new family: learned scales on every layer's keys and values, no prompt) needs only its file
  and its own Placement: it trains (the scales move, so the hooks took part) and evaluates.

One tiny base (MiniLM, head scoring), a few steps each: a shared run serves several checks.
"""

import pytest
import torch
from safetensors.torch import load_file

from conftest import MINI, read_jsonl
from plugin_methods.kv_scales import KvScales
from plugin_methods.lora_prompt import LoraPrompt
from ptune_dist.checkpoint import state
from ptune_dist.checkpoint.peft_format import export_peft
from ptune_dist.config import load_config
from ptune_dist.errors import ConfigError
from ptune_dist.inference import evaluate_checkpoint
from ptune_dist.methods import METHODS, register
from ptune_dist.plan import parse_request, plan
from ptune_dist.train import loop
from ptune_dist.train.engine import TorchEngine

RUN = [
    f"model.name_or_path={MINI}",
    "tasks.0.preset=support",
    "tasks.0.scoring=head",
    "data.max_train_examples=8",
    "data.max_eval_examples=4",
    "data.batch_size=4",
    "train.steps=4",
    "train.lr=0.05",
    "model.dropout=0.0",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "train.save_every=2",
]
LORA = ["method.name=lora_prompt", "method.num_virtual_tokens=3", "method.rank=3"]


class Crash(Exception):
    pass


def losses(run):
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r and "split" not in r}


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A finished lora_prompt run, with the method registered for the module's tests."""
    root = tmp_path_factory.mktemp("lora")
    with register(LoraPrompt):
        loop.train(load_config([], RUN + LORA + [f"output_dir={root / 'a'}"]))
        yield root


def test_a_registered_method_trains_checkpoints_and_resumes_exactly(lora, monkeypatch):
    a, b = lora / "a", lora / "b"
    assert [p.name for _, p in state.step_dirs(a / "checkpoints")] == ["step-4", "step-2"]
    weights = load_file(a / "final" / "trainable.safetensors")
    assert {k for k in weights if k.startswith("prompts.")} == {"prompts.default.a", "prompts.default.b"}
    assert tuple(weights["prompts.default.a"].shape) == (3, 3)  # [P, rank], from the method's own config
    real, calls = TorchEngine.step, []

    def step_or_crash(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise Crash("killed in step 3")
        return real(self, *args)

    args = RUN + LORA + [f"output_dir={b}"]
    monkeypatch.setattr(TorchEngine, "step", step_or_crash)
    with pytest.raises(Crash):
        loop.train(load_config([], args))
    monkeypatch.undo()
    loop.train(load_config([], args))  # resumes from step-2
    assert losses(a) == losses(b) and list(losses(a)) == [1, 2, 3, 4]
    again = load_file(b / "final" / "trainable.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_a_registered_method_evaluates_plans_and_is_refused_by_peft_export(lora):
    metrics = evaluate_checkpoint(lora / "a" / "final")
    assert metrics["default"]["examples"] == 4 and 0 < metrics["default"]["loss"] < 100, metrics
    with pytest.raises(ConfigError, match="method.name=lora_prompt: PEFT has no prompt format for it; exportable: "):
        export_peft(lora / "a" / "final", lora / "adapter")
    req = parse_request(
        [
            f"model={MINI}",
            "method=lora_prompt",
            "method.num_virtual_tokens=3",
            "method.rank=3",
            "hardware.gpus=1",
            "hardware.gpu_mem=80GB",
            "tasks.0.preset=support",
            "tasks.0.scoring=head",
        ]
    )
    assert req.base.method == LoraPrompt.section(num_virtual_tokens=3, rank=3)  # the planner holds its config
    rows = plan(req)
    trained = load_file(lora / "a" / "final" / "trainable.safetensors")
    prompt, head = (sum(v.numel() for k, v in trained.items() if k.startswith(part)) for part in ("prompts.", "heads."))
    assert prompt == 3 * 3 + 3 * 384 and rows  # the prompt's count from its own config (rank 3), as trained
    assert all(r.breakdown.trainable_params == prompt + (head if r.setup.head_classes else 0) for r in rows)


def test_a_methods_knob_is_an_error_for_another_method(lora):
    with pytest.raises(
        ConfigError, match="method.rank=3: method.name=prompt_tuning has no key rank; it is a key of lora_prompt"
    ):
        load_config([], ["method.rank=3"])


def test_a_new_family_needs_only_its_file_and_its_placement(tmp_path):
    run = tmp_path / "kv"
    with register(KvScales):
        loop.train(load_config([], RUN + ["method.name=kv_scales", "train.save_every=0", f"output_dir={run}"]))
        scales = load_file(run / "final" / "trainable.safetensors")["prompts.default.scales"]
        assert tuple(scales.shape) == (6, 2, 384)  # MiniLM: 6 layers, keys and values 384 wide
        assert not torch.equal(scales, torch.ones_like(scales))  # the hooks put the scales in the forward pass
        metrics = evaluate_checkpoint(run / "final")
    assert metrics["default"]["examples"] == 4, metrics
    assert "kv_scales" not in METHODS  # the registration is undone
    with pytest.raises(ConfigError, match="method.name='kv_scales' is not allowed"):
        load_config([], ["method.name=kv_scales"])
