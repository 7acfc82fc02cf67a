"""Losses: the LM head runs only where labels are; masked-LM scoring; gradient accumulation and the
gradient-checkpointing switch change no result."""

import torch

from conftest import FIXTURES, MINI, read_jsonl, session
from ptune_dist.config import load_config
from ptune_dist.data.collate import collate
from ptune_dist.model.load import load_base
from ptune_dist.train.loop import train

GEN = ["tasks.0.type=generation", f"tasks.0.train={FIXTURES}/instructions.jsonl", "method.num_virtual_tokens=4"]


def head_inputs(model):
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    return seen, hook


def test_generation_loss_runs_the_lm_head_on_labelled_positions_only(smol):
    s = session(GEN, base=smol)
    batch = collate(s.tasks[0].train[:4], s.pad_id, "right")
    seen, hook = head_inputs(s.model)
    out = s.model(batch)
    hook.remove()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(labelled, 576)] and out.count == labelled < batch["input_ids"].numel() // 4
    full = s.model.lm_head(s.model.encode(batch).last_hidden_state)[:, :-1]  # the long way, for the value
    target = batch["labels"][:, 1:]
    want = torch.nn.functional.cross_entropy(full[target != -100], target[target != -100])
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)


def test_classification_runs_the_lm_head_on_one_position_per_row(smol):
    s = session(["tasks.0.preset=support", "data.max_train_examples=5"], base=smol)
    seen, hook = head_inputs(s.model)
    s.model(collate(s.tasks[0].train, s.pad_id, "right"))
    hook.remove()
    assert seen == [(5, 576)]


def test_masked_lm_scoring_on_an_encoder():
    """MiniLM ships without its MLM head (transformers initialises one): this checks the mechanics of
    scoring label words at the mask, not accuracy."""
    cfg = load_config([], [f"model.name_or_path={MINI}", "model.kind=masked_lm", "model.dropout=0.0"])
    base = load_base(cfg.model)
    for method in ("prompt_tuning", "p_tuning_v2"):
        s = session(
            [
                f"model.name_or_path={MINI}",
                "model.kind=masked_lm",
                f"method.name={method}",
                "tasks.0.preset=rte",
                f"tasks.0.train={FIXTURES}/superglue/rte.jsonl",
                "method.num_virtual_tokens=3",
            ],
            base=base,
        )
        batch = collate(s.tasks[0].train, s.pad_id, "right")
        assert (batch["input_ids"][torch.arange(4), batch["answer_pos"]] == s.tokenizer.mask_token_id).all()
        out = s.model(batch)
        out.loss.backward()
        assert len(out.scores[0]) == 2 and all(p.grad is not None for p in s.model.trainable_parameters().values())


def losses(out_dir):
    return [r["loss"] for r in read_jsonl(out_dir / "metrics.jsonl") if "loss" in r and "split" not in r]


def test_accumulation_and_checkpointing_switches_keep_the_losses(tmp_path):
    common = [
        f"model.name_or_path={MINI}",
        "method.name=p_tuning_v2",
        "tasks.0.preset=support",
        "tasks.0.scoring=head",
        "data.max_train_examples=32",
        "data.max_eval_examples=8",
        "train.steps=3",
        "train.log_every=1",
        "train.progress_bar=false",
        "train.tensorboard=false",
        "model.dropout=0.0",
    ]
    runs = {
        "plain": ["data.batch_size=8"],
        "accum": ["data.batch_size=4", "train.grad_accum=2"],
        "ckpt": ["data.batch_size=8", "model.gradient_checkpointing=true"],
    }
    got = {}
    for name, extra in runs.items():
        train(load_config([], common + extra + [f"output_dir={tmp_path / name}"]))
        got[name] = losses(tmp_path / name)
    for name in ("accum", "ckpt"):
        for a, b in zip(got[name], got["plain"]):
            assert abs(a - b) < 1e-5, (name, got[name], got["plain"])
