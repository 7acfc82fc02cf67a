"""Between two logging steps a training step asks the device for nothing: no host-device synchronisation in the
forward, the backward, the optimizer step or the loop (tests/sync_counter.py counts what would sync on a GPU),
for every method, padded and packed, one task and mixed tasks, classification, generation and token
classification, a quantised base, gradient accumulation with checkpointing, the plain engine and DeepSpeed.

Each case is a real `ptune train` of 4 steps on a 2-layer random-init Llama (GQA 4/2 heads), logging every 2nd
step. The syncs that remain are named here with their reason:
- LOG: at a logging step, the guard reads the steps' gradient norms and losses since the last read, in one copy
  (train/nonfinite.py: that is where a non-finite step is found and the loss is logged).
- DeepSpeed ZeRO-1/2/3 reads its own gradient norm on the host every step (deepspeed/runtime/utils.py
  is_invalid_grad_norm, its overflow check), and ZeRO-3 checks its parameter trace across ranks on the first
  two steps; on this CPU, DeepSpeed's device is named "cpu", which hides which of its own tensors are host
  memory, so its own frames are left out of the count and only ptune's are asserted.
- Adafactor has no device-side way to leave an update out (fused AdamW has: found_inf), so a non-finite check
  reads one flag per update (train/optim.py step_unless), and torch's Adafactor reads two norms per parameter.
Generation (decoding) reads one flag per token: whether every row has finished (and transformers' KV cache makes
its empty tensors with a host copy once per layer and call).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import FIXTURES, tiny_llama
from ptune_dist.config import load_config
from sync_counter import SyncCounter, count_steps, summary

LOG = "Tensor.tolist of a device tensor at ptune_dist/train/nonfinite.py"
RTE = f"{FIXTURES}/superglue/rte.jsonl"
MIXED = f"tasks=[{{name: support, preset: support}}, {{name: rte, preset: rte, train: '{RTE}', eval: '{RTE}'}}]"
GENERATION = [
    "tasks.0.type=generation",
    f"tasks.0.train={FIXTURES}/instructions.jsonl",
    f"tasks.0.eval={FIXTURES}/instructions.jsonl",
]
NER = [
    "tasks.0.type=token_classification",
    "tasks.0.scoring=head",
    f"tasks.0.train={FIXTURES}/ner.jsonl",
    f"tasks.0.eval={FIXTURES}/ner.jsonl",
    "tasks.0.labels=[O,B-PER,I-PER,B-LOC,I-LOC]",
]
CASES = {  # method, layout, tasks, objective, engine, and what else runs in the step
    "prompt_tuning-padded-one-classification": ["method.name=prompt_tuning", "tasks.0.preset=support"],
    "p_tuning-padded-mixed-classification": ["method.name=p_tuning", MIXED, "data.max_train_examples=16"],
    "prefix_tuning-packed-mixed-classification": [
        "method.name=prefix_tuning",
        MIXED,
        "data.max_train_examples=16",
        "data.packing=true",
    ],
    "p_tuning_v2-packed-one-generation-accum-checkpointing": [
        "method.name=p_tuning_v2",
        *GENERATION,
        "data.packing=true",
        "train.grad_accum=2",
        "model.gradient_checkpointing=true",
    ],
    "p_tuning-padded-one-generation": ["method.name=p_tuning", *GENERATION],
    "p_tuning_v2-packed-mixed-classification": [
        "method.name=p_tuning_v2",
        MIXED,
        "data.max_train_examples=16",
        "data.packing=true",
    ],
    "p_tuning_v2-packed-one-token_classification-head": [
        "method.name=p_tuning_v2",
        *NER,
        "data.packing=true",
        "data.batch_size=1",
    ],
    "prompt_tuning-padded-one-classification-nf4": [
        "method.name=prompt_tuning",
        "tasks.0.preset=support",
        "model.quant=nf4",
    ],
}
DEEPSPEED = {
    "p_tuning_v2-padded-mixed-classification-zero0": [
        "method.name=p_tuning_v2",
        MIXED,
        "data.max_train_examples=16",
        "distributed.engine=deepspeed",
        "distributed.zero_stage=0",
    ],
    "prompt_tuning-packed-one-generation-zero3": [
        "method.name=prompt_tuning",
        *GENERATION,
        "data.packing=true",
        "distributed.engine=deepspeed",
        "distributed.zero_stage=3",
    ],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer Llama (hidden 64, GQA 4/2 heads), random weights."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden=64, intermediate=128, layers=2, heads=4)


def overrides(tiny, out, case):
    return [
        f"model.name_or_path={tiny}",
        "data.max_length=64",
        "data.batch_size=4",
        "train.steps=4",
        "train.log_every=2",
        "method.num_virtual_tokens=4",
        "model.dropout=0.0",
        "train.progress_bar=false",
        "train.tensorboard=false",
        "train.eval_baseline=false",
        "data.max_eval_examples=2",
        f"output_dir={out}",
        *case,
    ]


def ours(syncs) -> Counter:
    """The syncs asked for by ptune's own code (not DeepSpeed's), each as "what at file"."""
    return Counter(
        f"{what} at {where.split(':')[0]}" for what, where in syncs if where.startswith(("ptune_dist/", "kernels/"))
    )


def check(steps: dict) -> None:
    assert sorted(steps) == [1, 2, 3, 4]
    for step, (logged, syncs) in steps.items():
        want = Counter({LOG: 1}) if logged else Counter()
        assert logged == (step % 2 == 0)
        assert ours(syncs) == want, f"step {step}: {syncs}"


@pytest.mark.parametrize("case", CASES)
def test_no_sync_between_logging_steps(case, tiny, tmp_path):
    steps = count_steps(load_config([], overrides(tiny, tmp_path, CASES[case])))
    check({k: (logged, [(s.what, s.where) for s in syncs]) for k, (logged, syncs) in steps.items()})
    assert all(not syncs for step, (logged, syncs) in steps.items() if not logged)  # nothing at all, ours or not


@pytest.mark.parametrize("case", DEEPSPEED)
def test_no_sync_of_ours_between_logging_steps_under_deepspeed(case, tiny, tmp_path):
    """In a process of its own (DeepSpeed joins a process group); DeepSpeed's own syncs are named above."""
    run = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("sync_counter.py")),
            "device",
            *overrides(tiny, tmp_path, DEEPSPEED[case]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    check({int(step): (logged, syncs) for step, (logged, syncs) in found.items()})
    if case.endswith("zero0"):  # no ZeRO partitions: nothing of DeepSpeed's either
        assert all(not syncs for logged, syncs in found.values() if not logged), found


def test_adafactor_reads_its_skip_flag_and_torch_its_norms(tiny, tmp_path):
    steps = count_steps(
        load_config(
            [],
            overrides(
                tiny, tmp_path, ["method.name=prompt_tuning", "tasks.0.preset=support", "train.optimizer=adafactor"]
            ),
        )
    )
    for step, (logged, syncs) in steps.items():
        where = Counter(s.where.split(":")[0].split("/")[-1] for s in syncs)
        assert where == Counter({"optim.py": 1, "_adafactor.py": 2, **({"nonfinite.py": 1} if logged else {})}), syncs


def test_greedy_decoding_reads_one_flag_per_token(tiny):
    """model/generate.py: the tokens stay on the device; per token the host reads whether every row has finished,
    and the tokens come back in one copy at the end."""
    from conftest import session
    from ptune_dist.data.collate import collate
    from ptune_dist.model.generate import greedy

    s = session(
        [
            f"model.name_or_path={tiny}",
            *GENERATION,
            "method.name=p_tuning_v2",
            "method.num_virtual_tokens=4",
            "data.padding_side=left",
        ],
        splits=("eval",),
    )
    batch = s.model.describe(collate(s.tasks[0].eval[:3], s.pad_id, "left"))  # on the host, before it moves
    counter = SyncCounter()
    counter.mark(s.model, batch)
    with counter:
        tokens = greedy(s.model, batch, max_new_tokens=5, eos_id=-1)  # never finishes: all 5 tokens
    syncs = summary(counter.take())
    assert all(len(row) == 5 for row in tokens)
    flags = sum(n for k, n in syncs.items() if "generate.py" in k and "item" in k)
    copies = sum(n for k, n in syncs.items() if "generate.py" in k and "tolist" in k)
    assert (flags, copies) == (5 + 1, 1), syncs  # 5 tokens + the left-padding check once; the tokens once
    # transformers' DynamicCache makes each layer's empty key and value tensors with torch.tensor([], device=...),
    # once per call (2 layers here), not per token
    cache = sum(n for k, n in syncs.items() if "cache_utils.py" in k)
    assert cache == 2 * 2 and sum(syncs.values()) == flags + copies + cache, "\n".join(
        f"{n} {k}" for k, n in syncs.items()
    )
