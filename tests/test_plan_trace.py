"""The trace of a training step on a fake CUDA device (ptune_dist/plan/trace.py, live_bytes.py, fake_cuda.py):
it runs without a GPU and without allocating what it counts, its parts add up to its peak, it agrees with the
planner on small Llama shapes, it sees what checkpointing and nf4 change, and `ptune plan --trace` prints it.
The traces share one child process (a CPU-only torch needs one, with the fake device loaded first)."""

import json

import pytest
import torch

from ptune_dist.cli import main
from ptune_dist.config import load_config
from ptune_dist.plan import setup_from_config
from ptune_dist.plan.arch import from_hf_config
from ptune_dist.plan.live_bytes import CATEGORIES, LiveBytes
from ptune_dist.plan.memory import predict
from ptune_dist.plan.trace import Trace, check_traceable, trace_steps

GiB = 2**30
SMALL = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    tie_word_embeddings=True,
    max_position_embeddings=1024,
)
# wide enough that what the trace counts is far above what the tracing process holds
WIDE = {
    **SMALL,
    "num_hidden_layers": 2,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}
CASES = {
    "bf16": (SMALL, ["model.dtype=bfloat16", "method.name=prompt_tuning"]),
    "bf16-ckpt": (SMALL, ["model.dtype=bfloat16", "method.name=prompt_tuning", "model.gradient_checkpointing=true"]),
    "nf4-v2": (
        SMALL,
        ["model.dtype=bfloat16", "model.quant=nf4", "model.quant_compute_dtype=bfloat16", "method.name=p_tuning_v2"],
    ),
    "nf4dq-cls": (
        SMALL,
        [
            "model.dtype=bfloat16",
            "model.quant=nf4",
            "model.quant_double=true",
            "model.quant_compute_dtype=bfloat16",
            "method.name=prefix_tuning",
            "tasks.0.type=classification",
        ],
    ),
    "bf16-cls": (SMALL, ["model.dtype=bfloat16", "method.name=prompt_tuning", "tasks.0.type=classification"]),
    "wide": (WIDE, ["model.dtype=bfloat16", "method.name=prompt_tuning", "data.batch_size=16", "data.max_length=512"]),
}
LABEL_TOKENS = 32


def config(overrides):
    return load_config(
        [],
        [
            "model.name_or_path=small-llama",
            "tasks.0.type=generation",
            "data.batch_size=4",
            "data.max_length=256",
            "method.num_virtual_tokens=8",
            "train.steps=2",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def traces():
    names = list(CASES)
    answers = trace_steps([(config(CASES[n][1]), CASES[n][0], LABEL_TOKENS) for n in names])
    for name, answer in zip(names, answers):
        if isinstance(answer, Exception):
            raise AssertionError(f"{name}: {answer}")
    return dict(zip(names, answers))


def predicted(name):
    hf, overrides = CASES[name]
    cfg = config(overrides)
    arch = from_hf_config(hf, name="small")
    return predict(arch, setup_from_config(cfg, arch, {"label_tokens": str(LABEL_TOKENS)}, "gpu"))


def test_live_bytes_follow_each_storage_from_its_op_to_its_last_reference():
    """CPU fake tensors: blocks rounded to 512 bytes, views share their storage, a freed storage leaves, the
    peak keeps what was alive at its moment, named tensors take their category."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), LiveBytes(torch.device("cpu")) as t:
        w = torch.empty(1000)  # 4000 bytes -> 4096
        t.add(w, "weights")
        t.region = "forward"
        kept = torch.empty(100)
        scratch = torch.empty(10_000)
        view = scratch[:10]
        del scratch, view
        t.end_forward()
        t.region = "backward"
        grad = torch.empty(300)
        assert t.total == 4096 + 512 + 1536
    assert t.peak == 4096 + 512 + 40448
    # at the peak, `kept` (alive when the forward ended) is an activation, the freed scratch workspace
    assert t.breakdown() == {**dict.fromkeys(CATEGORIES, 0), "weights": 4096, "activations": 512, "workspace": 40448}
    assert t.now() == {**dict.fromkeys(CATEGORIES, 0), "weights": 4096, "activations": 512, "workspace": 1536}
    del w, kept, grad


def test_the_trace_adds_up_and_allocates_nothing_it_counts(traces):
    for name, tr in traces.items():
        assert isinstance(tr, Trace)
        assert sum(tr.parts.values()) == tr.peak > 0, name
        assert set(tr.parts) == set(CATEGORIES)
        assert tr.parts["weights"] > 0 and tr.parts["activations"] > 0 and tr.parts["prompt_optimizer"] > 0, name
        assert tr.steps == 2 and tr.peak >= sum(tr.loaded.values())
    wide = traces["wide"]
    assert wide.peak > 2 * GiB and wide.peak > 3 * wide.host_rss  # counted on the fake device, never allocated
    assert traces["bf16"].attention == "triton"  # what model.attention=auto runs on CUDA in bf16


@pytest.mark.parametrize("name", list(CASES))
def test_the_trace_matches_the_planner(traces, name):
    p, tr = predicted(name), traces[name]
    assert p.tensors == pytest.approx(tr.peak, rel=0.10), (name, p.as_dict(), tr.parts)
    assert p.frozen_weights == pytest.approx(tr.parts["weights"] + tr.parts["quant_state"], rel=0.02)


def test_the_trace_sees_checkpointing_and_nf4(traces):
    plain, ckpt, nf4 = traces["bf16"], traces["bf16-ckpt"], traces["nf4-v2"]
    assert ckpt.parts["activations"] < plain.parts["activations"] / 2
    assert nf4.parts["quant_state"] > 0 == plain.parts["quant_state"]
    assert nf4.parts["weights"] + nf4.parts["quant_state"] < plain.parts["weights"]


def test_what_the_trace_cannot_run_is_refused_by_key():
    with pytest.raises(ValueError, match="distributed.engine=deepspeed"):
        check_traceable(config(["distributed.engine=deepspeed", "distributed.zero_stage=3"]))
    with pytest.raises(ValueError, match="data.packing"):
        check_traceable(config(["data.packing=true"]))
    with pytest.raises(ValueError, match="model.quant=int8"):
        check_traceable(config(["model.quant=int8"]))
    with pytest.raises(ValueError, match="train.optimizer=adafactor"):
        check_traceable(config(["train.optimizer=adafactor"]))


def test_ptune_plan_trace_prints_the_traced_peak(tmp_path, capsys):
    """A HF folder (config.json only): the plan's first setup traced, its peak beside the prediction."""
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    code = main(
        [
            "plan",
            f"model={tmp_path}",
            "method=prompt_tuning",
            "hardware.gpus=1",
            "hardware.gpu_mem=24GB",
            "data.batch_size=4",
            "data.max_length=256",
            "tasks.0.type=generation",
            "train.grad_accum=1",
            f"plan.label_tokens={LABEL_TOKENS}",
            "model.dtype=bfloat16",
            "model.quant=none",
            "model.gradient_checkpointing=false",
            "--trace",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    traced = [i for i, line in enumerate(lines) if line.strip().startswith("traced:")]
    assert len(traced) == 1 and lines[traced[0] - 2].lstrip().startswith("1 yes"), out
    assert "GB of live CUDA tensors" in lines[traced[0]] and "x the trace" in lines[traced[0]], out
