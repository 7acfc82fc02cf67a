"""Data: templates, verbalizers, SuperGLUE presets, instruction format, token tags, truncation, built-ins."""

import pytest

from conftest import FIXTURES, MINI, SMOL, write_jsonl
from ptune_dist.config import load_config
from ptune_dist.data.builtin import generate
from ptune_dist.data.collate import collate
from ptune_dist.data.encode import IGNORE
from ptune_dist.errors import ConfigError, DataError
from ptune_dist.train.session import prepare

SG = FIXTURES / "superglue"


def prep(*overrides, model=SMOL, splits=("train",)):
    cfg, tok, info, data = prepare(load_config([], [f"model.name_or_path={model}", *overrides]), splits)
    return cfg, tok, data


@pytest.mark.parametrize(
    "name, labels",
    [
        ("boolq", ["false", "true"]),
        ("cb", ["entailment", "contradiction", "neutral"]),
        ("rte", ["entailment", "not_entailment"]),
        ("copa", ["0", "1"]),
        ("wic", ["false", "true"]),
        ("wsc", ["false", "true"]),
    ],
)
def test_superglue_presets_causal(name, labels):
    cfg, tok, data = prep(f"tasks.0.preset={name}", f"tasks.0.train={SG / name}.jsonl", "method.num_virtual_tokens=5")
    t = data[0]
    assert t.spec.labels == labels
    rows = [line for line in (SG / f"{name}.jsonl").read_text().splitlines()]
    assert len(t.train) == len(rows)
    ex = t.train[0]
    assert ex.soft == [0, 1, 2, 3, 4]  # SmolLM2 adds no BOS: the virtual tokens come first
    text = tok.decode(ex.input_ids[5:])
    assert text.endswith("Answer:")
    assert ex.answer_pos == len(ex.input_ids) - 1  # the last token predicts the label word
    words = [tok.decode([i]) for ids in t.spec.label_word_ids for i in ids]
    assert all(w.startswith(" ") for w in words)  # causal LMs: the answer follows a space
    gold = {"boolq": 1, "cb": 1, "rte": 0, "copa": 0, "wic": 0, "wsc": 1}[name]  # the first fixture row's label
    assert ex.labels == gold


def test_copa_and_boolq_field_values_reach_the_text():
    _, tok, data = prep("tasks.0.preset=copa", f"tasks.0.train={SG}/copa.jsonl", "method.name=prefix_tuning")
    text = tok.decode(data[0].train[1].input_ids)
    assert "What was the cause?" in text and "It had rained overnight." in text
    assert data[0].train[1].soft == []  # deep prompts take no input slots


def test_wic_and_wsc_fields_reach_the_text():
    _, tok, data = prep("tasks.0.preset=wic", f"tasks.0.train={SG}/wic.jsonl", "method.name=prefix_tuning")
    text = tok.decode(data[0].train[1].input_ids)
    assert "They run a small bakery" in text and "the word 'run' used in the same way" in text
    assert data[0].train[1].labels == 1  # true
    _, tok, data = prep("tasks.0.preset=wsc", f"tasks.0.train={SG}/wsc.jsonl", "method.name=prefix_tuning")
    text = tok.decode(data[0].train[2].input_ids)
    assert "does the pronoun 'she' refer to 'Susan'?" in text and data[0].train[1].labels == 0


def test_masked_lm_places_the_mask_and_frames_with_specials():
    _, tok, data = prep(
        "tasks.0.preset=rte",
        f"tasks.0.train={SG}/rte.jsonl",
        "model.kind=masked_lm",
        "method.num_virtual_tokens=3",
        model=MINI,
    )
    ex = data[0].train[0]
    assert ex.input_ids[0] == tok.cls_token_id and ex.input_ids[-1] == tok.sep_token_id
    assert ex.soft == [1, 2, 3]  # after [CLS]
    assert ex.input_ids[ex.answer_pos] == tok.mask_token_id
    assert data[0].spec.label_word_ids == [tok.convert_tokens_to_ids(["true"]), tok.convert_tokens_to_ids(["false"])]


def test_soft_slot_in_the_template():
    _, tok, data = prep(
        "tasks.0.preset=support",
        "tasks.0.template=Message: {soft} {text}{answer}",
        "method.num_virtual_tokens=4",
        "data.max_train_examples=3",
    )
    ex = data[0].train[0]
    before = tok("Message: ", add_special_tokens=False)["input_ids"]
    assert ex.input_ids[: len(before)] == before
    assert ex.soft == list(range(len(before), len(before) + 4))


def test_collate_pads_either_side_and_moves_positions():
    _, tok, data = prep("tasks.0.preset=support", "method.num_virtual_tokens=2", "data.max_train_examples=4")
    exs = data[0].train[:3]
    n = [len(e.input_ids) for e in exs]
    for side in ("left", "right"):
        b = collate(exs, tok.pad_token_id, side)
        assert b["attention_mask"].sum(1).tolist() == n
        for i, e in enumerate(exs):
            off = max(n) - n[i] if side == "left" else 0
            assert b["answer_pos"][i] == e.answer_pos + off
            assert b["soft_mask"][i].nonzero().flatten().tolist() == [p + off for p in e.soft]


def test_instruction_rows_use_the_chat_template_and_label_only_the_output():
    _, tok, data = prep(
        "tasks.0.type=generation", f"tasks.0.train={FIXTURES}/instructions.jsonl", "method.num_virtual_tokens=3"
    )
    ex = data[0].train[0]
    labelled = [i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]
    assert tok.decode(labelled) == "Paris<|im_end|>"
    prompt = tok.decode(ex.input_ids[3 : len(ex.input_ids) - len(labelled)])
    assert "<|im_start|>user\nGive the capital of the country.\n\nFrance<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert all(lab == IGNORE for lab in ex.labels[:3])


def test_instruction_rows_without_chat_template():
    _, tok, data = prep(
        "tasks.0.type=generation", f"tasks.0.train={FIXTURES}/instructions.jsonl", "tasks.0.chat_template=never"
    )
    ex = data[0].train[2]  # no input
    text = tok.decode(ex.input_ids[len(ex.soft) :])
    assert text.startswith("### Instruction:\nName a primary colour.\n\n### Response:\nRed")
    assert "### Input" not in text


def test_token_classification_labels_first_subtokens():
    _, tok, data = prep(
        "tasks.0.type=token_classification",
        "tasks.0.scoring=head",
        f"tasks.0.train={FIXTURES}/ner.jsonl",
        "method.name=p_tuning_v2",
        model=MINI,
    )
    t = data[0]
    assert t.spec.labels == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]  # inferred from the training rows
    ex = t.train[3]  # Carol lives in New York
    tags = [t.spec.labels[lab] for lab in ex.labels if lab != IGNORE]
    assert tags == ["B-PER", "O", "O", "B-LOC", "I-LOC"]


def test_truncation(tmp_path):
    rows = [{"text": "word " * 200, "label": "billing"}]
    f = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(DataError, match=r"long.jsonl' line 1: \d+ tokens > 40 allowed"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}", "data.max_length=40")
    _, tok, data = prep("tasks.0.preset=support", f"tasks.0.train={f}", "data.max_length=40", "data.truncation=right")
    assert len(data[0].train[0].input_ids) <= 40


def test_labels_and_verbalizer_errors(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "billing"}, {"text": "b", "label": "refunds"}])
    with pytest.raises(DataError, match=r"d.jsonl' line 2: label 'refunds' is not one of"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")
    with pytest.raises(ConfigError, match="same token"):
        prep(f"tasks.0.train={f}", "tasks.0.verbalizer={billing: [' bill'], account: [' bill']}")
    with pytest.raises(ConfigError, match="scoring=head"):
        prep("tasks.0.preset=support", model=MINI)
    with pytest.raises(DataError, match="has no field 'premise'"):
        prep("tasks.0.preset=rte", f"tasks.0.train={f}")


def test_builtin_support_splits_are_disjoint_patterns():
    train = {r["text"] for r in generate("support", "train", "k")}
    val = generate("support", "validation", "k")
    assert len(val) == 200 and not train & {r["text"] for r in val}
    assert {r["label"] for r in val} == {"account", "billing", "shipping", "technical"}
    assert generate("support", "train", "k") == generate("support", "train", "k")  # deterministic


def test_truncation_shortens_several_fields(tmp_path):
    rows = [{"premise": "alpha " * 120, "hypothesis": "beta " * 110, "label": "entailment"}]
    f = write_jsonl(tmp_path / "long.jsonl", rows)
    _, tok, data = prep(
        "tasks.0.preset=rte",
        f"tasks.0.train={f}",
        "data.max_length=60",
        "data.truncation=left",
        "method.num_virtual_tokens=4",
    )
    ex = data[0].train[0]
    text = tok.decode(ex.input_ids)
    assert len(ex.input_ids) <= 60 and "alpha" in text and "beta" in text and text.endswith("Answer:")


def test_labelled_splits_need_the_answer_and_prediction_drops_it(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "billing"}, {"text": "b"}])
    with pytest.raises(DataError, match="d.jsonl' line 2 has no field 'label'"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")
    _, tok, data = prep("tasks.0.type=generation", f"tasks.0.train={FIXTURES}/instructions.jsonl")
    enc = data[0].encoder
    assert enc.target_fields == ("output",)
    row = {"instruction": "Give the capital of the country.", "input": "Peru"}
    ex = enc.encode(row, "row", labelled=False)
    assert ex.labels is None and tok.decode(ex.input_ids).endswith("assistant\n")
    with pytest.raises(DataError, match="has no field 'output'"):
        enc.encode(row, "row")


def test_every_local_format_reads_the_same_rows(tmp_path):
    """JSON lines, a JSON array, JSON lines in a .json file, CSV and Parquet: the same rows, named by line
    (JSONL, CSV), by index and line (a JSON array) or by index (Parquet)."""
    import json

    from ptune_dist.data.sources import load_rows

    rows = [
        {"text": 'a, "quoted"\nsecond line', "label": 1, "gold": True},
        {"text": "007", "label": 0, "gold": False},
        {"text": "é", "label": 2, "gold": None},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "lines.json").write_text("\n\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "d.csv").write_text(
        '\ufefftext,label,gold\n"a, ""quoted""\nsecond line",1,true\n\n007,0,FALSE\né,2,\n', encoding="utf-8"
    )
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pytest.importorskip("pyarrow").Table.from_pylist(rows), tmp_path / "d.parquet")
    where = {
        "d.jsonl": "line 3",
        "lines.json": "line 5",
        "d.json": "row 2 (line 12)",
        "d.csv": "line 6",
        "d.parquet": "row 2",
    }
    for name, last in where.items():
        got = load_rows(str(tmp_path / name), "train", "tasks.0.train")
        assert list(got) == rows, name
        assert got.where(2) == f"tasks.0.train={str(tmp_path / name)!r} {last}"
        assert got.head(1).where(0) == got.where(0) and len(got.head(1)) == 1
