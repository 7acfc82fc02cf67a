"""Training on a GPU, for real: every test here runs on `cuda` (marker gpu; scripts/gpu-check.sh runs
them on a GPU machine) and is skipped, with the reason, where there is none.

PTUNE_GPU_TEST_DEVICE=cpu runs the same bodies on the CPU: a check of the tests' own logic on a machine
without a GPU, never evidence that the GPU path works.

Models: all-MiniLM-L6-v2 (real weights; scripts/gpu-wheels.sh carries an fp16 copy as the embedded model)
and a small random-init Llama saved as a Hugging Face folder with MiniLM's tokenizer (no weights to
carry), on which a prompt memorises a few instruction rows: every method's loss falls by 7-20% in 30 steps
(measured on the CPU, bf16), more than 5% is asked.
"""

import json
import os
import shutil

import pytest
import torch

from conftest import FIXTURES, read_jsonl
from conftest import tiny_llama as save_tiny_llama
from ptune_dist.cli import main
from ptune_dist.config import load_config
from ptune_dist.train.loop import train
from ptune_dist.train.metrics_file import read_metrics

DEVICE = os.environ.get("PTUNE_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (scripts/gpu-check.sh runs these on one)",
    ),
]
METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"]
QUIET = ["train.progress_bar=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 4-layer Llama (GQA 8/2 heads, hidden 256), random weights, MiniLM's tokenizer with [SEP] as EOS."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def instruct(folder, out, *extra, device=DEVICE):
    """Generation on the 8 instruction rows of the fixtures, 30 steps, logged every step."""
    rows = FIXTURES / "instructions.jsonl"
    return load_config(
        [],
        [
            f"model.name_or_path={folder}",
            "tasks.0.type=generation",
            f"tasks.0.train={rows}",
            f"tasks.0.eval={rows}",
            "data.max_length=64",
            "data.batch_size=4",
            "train.steps=30",
            "train.log_every=1",
            "train.lr=0.3",
            "method.num_virtual_tokens=8",
            "model.dropout=0.0",
            f"train.device={device}",
            f"output_dir={out}",
            *QUIET,
            *extra,
        ],
    )


def train_losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r and "split" not in r]


def ran_on(out) -> dict:
    return next(r for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "device")


def assert_falls(losses: list[float], by: float = 0.05) -> None:
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < (1 - by) * first, f"loss did not fall by {by:.0%}: {losses}"


@pytest.mark.parametrize("quant", ["none", "nf4"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_a_bf16_and_an_nf4_base(tiny_llama, tmp_path, method, quant):
    extra = ["model.dtype=bfloat16", f"method.name={method}", f"model.quant={quant}"]
    if quant == "nf4":
        extra.append("model.quant_compute_dtype=bfloat16")
    train(instruct(tiny_llama, tmp_path, *extra))
    assert_falls(train_losses(tmp_path))
    assert ran_on(tmp_path)["device"].startswith(DEVICE)


def test_minilm_ptuning_v2_on_the_gpu_reaches_the_cpu_accuracy(tmp_path):
    """The real-weights run of configs/minilm_ptuning_v2.yaml on the GPU and on the CPU (same seed)."""
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "minilm_ptuning_v2.yaml")
    acc = {}
    for where in (DEVICE, "cpu"):
        out = tmp_path / where
        results = train(
            load_config([config], [f"output_dir={out}", f"train.device={where}", "train.threads=0", *QUIET])
        )
        acc[where] = results["final"]["support"]["accuracy"]
        assert results["device"]["device"].startswith(where)
    assert acc[DEVICE] >= 0.9 and abs(acc[DEVICE] - acc["cpu"]) <= 0.1, acc
    gpu_log = read_jsonl(tmp_path / DEVICE / "metrics.jsonl")
    assert ran_on(tmp_path / DEVICE)["backend"] == ("cuda:nccl,cpu:gloo" if DEVICE == "cuda" else "gloo")
    if DEVICE == "cuda":
        assert ran_on(tmp_path / DEVICE)["name"]  # the GPU's name, in the log
        memory = next(r for r in gpu_log if r.get("event") == "memory")
        assert memory["peak_gpu_bytes_per_rank"][0] > 0


@pytest.mark.parametrize("case", [[], ["data.packing=true", "train.grad_accum=2"]], ids=["padded", "packed"])
def test_no_sync_between_logging_steps_on_the_gpu(tiny_llama, tmp_path, case):
    """torch's own sync debug mode over real bf16 steps (the fused Triton kernels, P-tuning v2, generation): no
    operation makes the host wait for the GPU between logging steps (the CPU suite counts the same without a GPU:
    tests/test_sync_free.py); a logging step reads the steps' norms and losses once."""
    from sync_counter import CudaSyncWarnings, count_steps

    if DEVICE != "cuda":
        pytest.skip("torch.cuda.set_sync_debug_mode needs CUDA (tests/test_sync_free.py counts on the CPU)")
    steps = count_steps(
        instruct(
            tiny_llama,
            tmp_path,
            "model.dtype=bfloat16",
            "method.name=p_tuning_v2",
            "train.steps=6",
            "train.log_every=3",
            *case,
        ),
        watch=CudaSyncWarnings(),
    )
    first = steps[1][1]  # the first step: lazy initialisations, reported, not asserted
    for step, (logged, syncs) in steps.items():
        if step > 1 and not logged:
            assert not syncs, f"step {step}: {[(s.what, s.where) for s in syncs]} (step 1 had {len(first)})"
    assert all(syncs for logged, syncs in steps.values() if logged)  # the one read per logging step is seen


@pytest.mark.parametrize("method", ["p_tuning_v2", "prompt_tuning"])
def test_kernels_match_the_reference_inside_the_model(tiny_llama, method):
    """The model-level equivalence on the device: loss and prompt gradients of a left-padded batch with every
    kernel that runs there against `reference` (GQA 8/2, deep or shallow prompt): fp32 on the CPU, bf16 on a GPU
    (where the Triton kernels take fp16/bf16 only), with bf16's tolerances."""
    from conftest import assert_close_rel, grads, session
    from ptune_dist.data.collate import collate
    from ptune_dist.device import to_device
    from ptune_dist.kernels.api import unavailable

    dtype = "bfloat16" if DEVICE == "cuda" else "float32"
    tol = (2e-2, 5e-2) if DEVICE == "cuda" else (1e-4, 1e-3)  # loss, gradients (of their largest magnitude)

    def run(impl):
        s = session(
            [
                f"model.name_or_path={tiny_llama}",
                "tasks.0.type=generation",
                f"tasks.0.train={FIXTURES / 'instructions.jsonl'}",
                f"method.name={method}",
                "method.num_virtual_tokens=8",
                "model.dropout=0.0",
                f"model.attention={impl}",
                f"model.dtype={dtype}",
                f"train.device={DEVICE}",
            ],
            splits=("train",),
        )
        batch = collate(s.tasks[0].train[:4], s.pad_id, "left")
        assert not batch["attention_mask"].bool().all(), "the batch should be padded"
        out = s.model(to_device(batch, s.device))
        out.loss.backward()
        return out.loss.detach().cpu(), {n: g.cpu() for n, g in grads(s.model).items()}

    want_loss, want_grads = run("reference")
    probe = torch.empty(1, 1, 1, 64, device=DEVICE, dtype=getattr(torch, dtype))
    impls = [i for i in ("sdpa", "triton", "flash") if unavailable(i, probe) is None]
    assert DEVICE == "cpu" or "triton" in impls, "the compiled Triton kernels should run on a GPU"
    for impl in impls:
        loss, got = run(impl)
        assert_close_rel(loss, want_loss, tol[0])
        for name in want_grads:
            assert_close_rel(got[name], want_grads[name], tol[1])


def test_zero3_trains_on_the_gpu(tiny_llama, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    train(
        instruct(
            tiny_llama,
            tmp_path,
            "model.dtype=bfloat16",
            "method.name=p_tuning_v2",
            "distributed.engine=deepspeed",
            "distributed.zero_stage=3",
        )
    )
    assert_falls(train_losses(tmp_path))
    assert (tmp_path / "final" / "trainable.safetensors").is_file()  # gathered from the partitions


def test_a_gpu_run_resumes_on_the_cpu_and_continues_the_same(tiny_llama, tmp_path):
    """fp32, no dropout: steps 16-30 resumed on the CPU from the GPU's step-15 checkpoint give the GPU's losses."""
    gpu = tmp_path / "gpu"
    train(instruct(tiny_llama, gpu, "method.name=p_tuning_v2", "train.save_every=15"))
    cpu = tmp_path / "cpu"
    (cpu / "checkpoints").mkdir(parents=True)
    shutil.copytree(gpu / "checkpoints" / "step-15", cpu / "checkpoints" / "step-15")
    shutil.copy(gpu / "metrics.jsonl", cpu / "metrics.jsonl")
    train(instruct(tiny_llama, cpu, "method.name=p_tuning_v2", "train.save_every=15", device="cpu"))
    want, got = train_losses(gpu), train_losses(cpu)
    assert len(got) == len(want) == 30
    for step, (a, b) in enumerate(zip(got[15:], want[15:]), start=16):
        assert abs(a - b) <= 2e-3 * max(1.0, abs(b)), (step, got[15:], want[15:])
    assert ran_on(cpu)["device"] == "cpu"


def test_eval_predict_and_peft_export_from_a_gpu_run(tiny_llama, tmp_path, capsys):
    out = tmp_path / "run"
    train(instruct(tiny_llama, out, "method.name=prompt_tuning"))
    capsys.readouterr()
    assert main(["eval", str(out), f"train.device={DEVICE}"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["default"]["examples_tokens"] > 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Give the capital of the country.", "input": "France"}) + "\n")
    assert main(["predict", str(out), "--input", str(rows), f"train.device={DEVICE}"]) == 0
    assert "output" in json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(["export", str(out / "final"), "--format", "peft", "--out", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
