"""PEFT adapter format, both ways: same weights -> same logits (fp32, <= 1e-5) in ptune and in PEFT.

ptune -> PEFT: a ptune checkpoint exported with `ptune export` loads with PeftModel.from_pretrained.
PEFT -> ptune: an adapter saved by PEFT's save_pretrained imports with `ptune import`.
"""

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import SMOL
from ptune_dist.checkpoint import state
from ptune_dist.checkpoint.peft_format import export_peft, import_peft
from ptune_dist.config import load_config, to_yaml
from ptune_dist.inference import load_session
from ptune_dist.model.load import load_tokenizer, resolve_path
from ptune_dist.train.session import build_session

P = 6
TEXTS = [
    "The parcel never arrived and nobody answers my emails.",
    "Reset my password please.",
    "Why was I billed twice?",
]


def stock_base():
    return AutoModelForCausalLM.from_pretrained(resolve_path(SMOL), attn_implementation="sdpa").eval()


def lm_batch(tok, num_soft: int):
    """Right-padded texts with `num_soft` virtual-token slots in front."""
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    B = enc["input_ids"].shape[0]
    slots = torch.full((B, num_soft), tok.pad_token_id)
    batch = {
        "input_ids": torch.cat([slots, enc["input_ids"]], 1),
        "attention_mask": torch.cat([torch.ones(B, num_soft, dtype=torch.long), enc["attention_mask"]], 1),
        "seq_task": torch.zeros(B, dtype=torch.long),
    }
    if num_soft:
        batch["soft_mask"] = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        batch["soft_mask"][:, :num_soft] = True
    return batch, enc


def our_logits(model, batch, num_soft):
    with torch.no_grad():
        return model.lm_head(model.encode(batch).last_hidden_state)[:, num_soft:]


def peft_logits(peft_model, enc, shallow):
    with torch.no_grad():
        logits = peft_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return logits[:, P:] if shallow else logits


def assert_same(ours, theirs, enc):
    real = enc["attention_mask"].bool()
    diff = (ours - theirs)[real].abs().max().item()
    assert diff <= 1e-5, diff


METHODS = [
    ("prompt_tuning", ["method.init=vocab"]),
    ("p_tuning", ["method.encoder=mlp", "method.encoder_hidden_size=64"]),
    ("p_tuning", ["method.encoder=lstm", "method.encoder_hidden_size=32"]),
    ("prefix_tuning", ["method.projection_hidden_size=32"]),
    ("p_tuning_v2", []),
]


@pytest.mark.parametrize("method, extra", METHODS)
def test_ptune_to_peft(method, extra, smol, tmp_path):
    cfg = load_config(
        [],
        [
            f"method.name={method}",
            f"method.num_virtual_tokens={P}",
            "tasks.0.preset=support",
            "data.max_train_examples=4",
            *extra,
        ],
    )
    s = build_session(cfg, splits=(), base=smol)
    with torch.no_grad():  # move away from the initialisation so the test sees trained-like weights
        for p in s.model.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    state.save(tmp_path / "run" / "final", to_yaml(s.cfg), state.trainable_state(s.model))
    export_peft(tmp_path / "run", tmp_path / "adapter")
    shallow = s.model.placement.soft
    batch, enc = lm_batch(s.tokenizer, P if shallow else 0)
    ours = our_logits(s.model.eval(), batch, P if shallow else 0)
    theirs = peft_logits(PeftModel.from_pretrained(stock_base(), tmp_path / "adapter").eval(), enc, shallow)
    assert_same(ours, theirs, enc)
    base_only = peft_logits(stock_base(), enc, False)
    assert (ours - base_only)[enc["attention_mask"].bool()].abs().max() > 1e-2  # the prompt does something


PEFT_CONFIGS = [
    PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prompt_tuning_init="RANDOM"),
    PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, encoder_hidden_size=48),
    PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prefix_projection=True, encoder_hidden_size=32
    ),
    PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P),
]


@pytest.mark.parametrize("peft_config", PEFT_CONFIGS, ids=lambda c: f"{c.peft_type.value}")
def test_peft_to_ptune(peft_config, smol, tmp_path):
    torch.manual_seed(0)
    pm = get_peft_model(stock_base(), peft_config)
    with torch.no_grad():
        for p in pm.prompt_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "adapter")
    shallow = peft_config.peft_type.value in ("PROMPT_TUNING", "P_TUNING")
    _, enc = lm_batch(load_tokenizer(SMOL), 0)
    # compare with the adapter as saved: PEFT's live encoder output differs from its saved one by ~5e-7
    # (batch-size-dependent matmuls), which 30 layers of prefix attention amplify to ~5e-4 in the logits
    theirs = peft_logits(PeftModel.from_pretrained(stock_base(), tmp_path / "adapter").eval(), enc, shallow)
    import_peft(tmp_path / "adapter", tmp_path / "run", ["tasks.0.preset=support"])
    s = load_session(tmp_path / "run", splits=())
    batch, enc = lm_batch(s.tokenizer, P if shallow else 0)
    assert_same(our_logits(s.model, batch, P if shallow else 0), theirs, enc)
