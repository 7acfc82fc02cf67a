"""Rows that do not fit their task, broken data files and predict --output: each is an error naming the
file, the line (or row) and the field, or, with data.on_bad_row=skip, a counted omission; never "None"
or a dict's repr trained on, never a traceback. Only the tokenizer loads here, no model weights."""

import json
import os
import re
from types import SimpleNamespace

import pytest

from conftest import FIXTURES, MINI, SMOL
from ptune_dist.config import load_config
from ptune_dist.data.encode import IGNORE
from ptune_dist.errors import DataError
from ptune_dist.inference import predict_file, predict_rows, read_jsonl
from ptune_dist.train.session import prepare


def prep(*overrides, model=SMOL, splits=("train",)):
    cfg, tok, info, data = prepare(load_config([], [f"model.name_or_path={model}", *overrides]), splits)
    return cfg, tok, data


def lines(path, *items):
    """A JSONL file: dicts become JSON lines, strings are written as they are ("" is a blank line)."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in items))
    return path


GOOD = {"text": "My parcel never came.", "label": "shipping"}


def test_a_missing_field_names_the_file_line_and_field(tmp_path):
    f = lines(
        tmp_path / "d.jsonl",
        {"premise": "a", "hypothesis": "b", "label": "entailment"},
        "",
        {"hypothesis": "b", "label": "entailment"},
    )
    with pytest.raises(
        DataError,
        match=r"tasks\.0\.train='.*d\.jsonl' line 3 has no field 'premise' used by "
        r"tasks\.0\.template \(fields: \['hypothesis', 'label'\]\)",
    ):
        prep("tasks.0.preset=rte", f"tasks.0.train={f}")


@pytest.mark.parametrize(
    "value, shown",
    [
        (None, "null"),
        ({"en": "hi"}, "an object"),
        (["a", "b"], "a list"),
        (True, "a bool (true)"),
        (float("nan"), "nan"),
    ],
)
def test_a_text_field_holding_no_text_is_an_error(tmp_path, value, shown):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + json.dumps({"text": value, "label": "billing"}) + "\n")
    with pytest.raises(
        DataError,
        match=rf"d\.jsonl' line 2: field 'text' holds {re.escape(shown)}.*, not text "
        r"\(used by tasks\.0\.template\)",
    ):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


def test_numbers_become_text_and_a_json_array_names_the_row(tmp_path):
    f = lines(tmp_path / "d.jsonl", {"text": 1234, "label": "billing"}, {"text": 2.5, "label": "billing"})
    _, tok, data = prep("tasks.0.preset=support", f"tasks.0.train={f}", "method.num_virtual_tokens=2")
    assert [tok.decode(ex.input_ids[2:]) for ex in data[0].train] == ["1234", "2.5"]
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([GOOD, {"text": None, "label": "billing"}]))
    with pytest.raises(DataError, match=r"a\.json' row 1 \(line 1\): field 'text' holds null"):
        prep("tasks.0.preset=support", f"tasks.0.train={arr}")


def test_labels_unknown_null_or_not_a_label(tmp_path):
    for value, message in [
        ("pizza", r"line 3: label 'pizza' is not one of \['account', 'billing'"),
        (None, r"line 3: field 'label' holds null \(the answer"),
        ({"name": "billing"}, r"line 3: field 'label' holds an object .*not a label name or index"),
        (1.0, r"line 3: field 'label' holds 1\.0, not a label name or index"),
    ]:
        f = lines(tmp_path / "d.jsonl", GOOD, "", {"text": "x", "label": value})
        with pytest.raises(DataError, match=message):
            prep("tasks.0.preset=support", f"tasks.0.train={f}")


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"tokens": "Alice flew", "tags": ["B-PER", "O"]},
            r"field 'tokens' holds a str .*not a non-empty list of words",
        ),
        ({"tokens": [], "tags": []}, r"field 'tokens' holds a list \(\[\]\), not a non-empty list"),
        ({"tokens": ["Alice", None], "tags": ["B-PER", "O"]}, r"field 'tokens': word 1 holds null, not text"),
        ({"tokens": ["Alice", "flew"], "tags": ["B-PER"]}, r"2 tokens \('tokens'\) but 1 tags \('tags'\)"),
        ({"tokens": ["Alice", "flew"], "tags": "B-PER O"}, r"field 'tags' holds a str .*not a list of tags"),
        ({"tokens": ["Alice", "flew"], "tags": ["B-PER", {"t": "O"}]}, r"field 'tags': tag 1 holds an object"),
        ({"tokens": ["Alice", "flew"]}, r"line 2 has no field 'tags' \(the answer"),
    ],
)
def test_token_rows_need_word_lists_and_as_many_tags(tmp_path, row, message):
    good = {"tokens": ["Bob", "ran"], "tags": ["B-PER", "O"]}
    f = lines(tmp_path / "ner.jsonl", good, row)
    with pytest.raises(DataError, match=r"ner\.jsonl' line 2\b.*" + message.removeprefix("line 2")):
        prep(
            "tasks.0.type=token_classification",
            "tasks.0.scoring=head",
            f"tasks.0.train={f}",
            "tasks.0.labels=[B-PER, O]",
            "method.name=p_tuning_v2",
            model=MINI,
        )


@pytest.mark.parametrize(
    "row, message",
    [
        ({"input": "Peru", "output": "Lima"}, r"line 2 has no field 'instruction' used by tasks\.0"),
        ({"instruction": None, "output": "Lima"}, r"line 2: field 'instruction' holds null, not text"),
        ({"instruction": "Capital?", "input": ["Peru"], "output": "Lima"}, r"line 2: field 'input' holds a list"),
        ({"instruction": "Capital?", "output": {"city": "Lima"}}, r"line 2: field 'output' holds an object"),
        ({"instruction": "Capital?"}, r"line 2 has no field 'output' \(the answer"),
    ],
)
def test_instruction_rows_need_text_instruction_and_output(tmp_path, row, message):
    f = lines(tmp_path / "gen.jsonl", {"instruction": "Capital?", "input": "", "output": "Paris"}, row)
    with pytest.raises(DataError, match=r"gen\.jsonl' " + message):
        prep("tasks.0.type=generation", f"tasks.0.train={f}")


def test_broken_jsonl_names_the_exact_line(tmp_path):
    f = lines(tmp_path / "d.jsonl", GOOD, "", GOOD, '{"text": oops}', GOOD)
    with pytest.raises(
        DataError,
        match=rf"tasks\.0\.train: cannot read {f} line 4: not valid JSON \(Expecting "
        r"value at column 10\)",
    ):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")
    f = lines(tmp_path / "d.jsonl", GOOD, '["a list", "not an object"]')
    with pytest.raises(DataError, match=r"line 2: expected a JSON object .*found list"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "json"])
def test_non_utf8_bytes_name_the_line_and_offset(tmp_path, suffix):
    head = {
        "jsonl": b'{"text": "a", "label": "billing"}\n\n',
        "csv": b"text,label\na,billing\n",
        "json": b'[{"text": "a", "label": "billing"},\n',
    }[suffix]
    bad = {
        "jsonl": b'{"text": "caf\xe9", "label": "billing"}\n',
        "csv": b"caf\xe9,billing\n",
        "json": b'{"text": "caf\xe9", "label": "billing"}]\n',
    }[suffix]
    f = tmp_path / f"d.{suffix}"
    f.write_bytes(head + bad)
    offset = len(head) + bad.index(b"\xe9")
    line = head.count(b"\n") + 1
    with pytest.raises(
        DataError,
        match=rf"cannot read {f} line {line}: byte 0xe9 at byte offset {offset} "
        r"\(column \d+\) is not UTF-8",
    ):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


def test_csv_rows_are_named_by_their_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('text,label\n"two\nlines",billing\n\nfine,shipping\n,billing\n')
    with pytest.raises(DataError, match=r"d\.csv' line 6: field 'text' holds null"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2, 3]", r"a\.json row 0 \(line 1\): expected a JSON object .*found int"),  # datasets made up `text`
        ('[["hello", "a"]]', r"a\.json row 0 \(line 1\): expected a JSON object .*found list"),
        ('[\n  {"text": "a", "label": "billing"},\n  null\n]', r"a\.json row 1 \(line 3\): expected .*found null"),
        (
            '[\n  {"text": "a", "label": "billing"}\n  {"text": "b"}\n]',
            r"a\.json line 3: not valid JSON \(Expecting ',' "
            r"delimiter at column 3\)",
        ),
        ('[{"text": "a", "label": "billing"}] []', r"a\.json line 1: not valid JSON \(Extra data at column 37\)"),
        (
            '[{"text": "a", "text": "b", "label": "billing"}]',
            r"row 0 \(line 1\): an object names the field 'text' twice",
        ),
        (
            '{\n  "text": ["a", "b"],\n  "label": ["billing", "account"]\n}',
            r"a\.json: one JSON object over 4 lines; "
            r"expected an array of objects",
        ),
        ('{"text": "a", "label": "billing"}\n\n"b"\n', r"a\.json line 3: expected a JSON object .*found str"),
    ],
)
def test_a_json_file_holds_objects_named_by_index_and_line(tmp_path, text, message):
    f = tmp_path / "a.json"
    f.write_text(text)
    with pytest.raises(DataError, match=r"tasks\.0\.train: cannot read .*" + message):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


def test_json_lines_in_a_json_file_are_named_by_line(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({"text": ["a"], "label": "billing"}) + "\n")
    with pytest.raises(DataError, match=r"a\.json' line 3: field 'text' holds a list"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("text,label\n", r"d\.csv: no rows, only a header \(text,label\)"),
        ("text,label\n\n", r"d\.csv: no rows, only a header"),
        (
            "text,label\nfine,billing\nhello,a,extra,more\n",
            r"d\.csv line 3 has 4 fields, the header has 2 \(text, label\); "
            r"quote a value that holds a comma",
        ),
        ("text,label\nlonely\n", r"d\.csv line 2 has 1 field, the header has 2"),
        ("text,text,label\na,b,billing\n", r"d\.csv line 1: the header names the column 'text' twice"),
        (
            'text,label\nfine,billing\n"never closed,billing\n',
            r"d\.csv line 3: not valid CSV \(a quoted value is never "
            r"closed\)",
        ),
        ('text,label\n"a"b,billing\n', r"d\.csv line 2: not valid CSV"),
    ],
)
def test_a_csv_file_has_rows_as_wide_as_its_header(tmp_path, text, message):
    f = tmp_path / "d.csv"
    f.write_text(text)
    with pytest.raises(DataError, match=r"tasks\.0\.train: cannot read .*" + message):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


def test_csv_cells_stay_the_text_written(tmp_path):
    """pandas made 007 into 7.0, "NA" and "None" into null, and a label column with a blank cell into floats
    (the error then blamed the first row's label 0.0)."""
    f = tmp_path / "d.csv"
    f.write_text("text,label\n007,0\nNA,1\nNone,2\n2.50,3\n")
    _, tok, data = prep("tasks.0.preset=support", f"tasks.0.train={f}", "method.num_virtual_tokens=1")
    assert [tok.decode(ex.input_ids[1:]) for ex in data[0].train] == ["007", "NA", "None", "2.50"]
    assert [ex.labels for ex in data[0].train] == [0, 1, 2, 3]  # an integer column: label indices
    f.write_text("text,label\nseven,0\neight,\n")
    with pytest.raises(DataError, match=r"d\.csv' line 3: field 'label' holds null"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


def test_a_data_file_that_is_a_folder_or_a_device(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(DataError, match=rf"tasks\.0\.train: data file {tmp_path}/d\.jsonl is a folder; give a file"):
        prep("tasks.0.preset=support", f"tasks.0.train={tmp_path / 'd.jsonl'}")
    with pytest.raises(DataError, match=r"data file /dev/null is not a regular file"):
        prep("tasks.0.preset=support", "tasks.0.train=/dev/null")


def test_a_parquet_file_that_is_not_parquet_or_cut_short(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "d.parquet"
    f.write_text("text,label\nhello,billing\n")
    with pytest.raises(DataError, match=rf"cannot read {f}: not a Parquet file \(.*begins with b'text,label"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")
    pq.write_table(pa.table({"text": ["a", None], "label": ["billing", "account"]}), f)
    with pytest.raises(DataError, match=r"d\.parquet' row 1: field 'text' holds null"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(DataError, match=rf"cannot read {f}: a Parquet file cut short"):
        prep("tasks.0.preset=support", f"tasks.0.train={f}")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), f)
    with pytest.raises(DataError, match=r"d\.parquet': the dataset is empty"):  # was ArrowInvalid: BatchSize
        prep("tasks.0.preset=support", f"tasks.0.train={f}")


def test_skip_leaves_bad_rows_out_counts_them_and_infers_labels_from_the_rest(tmp_path, capsys):
    f = lines(
        tmp_path / "d.jsonl",
        {"text": "one", "label": "billing"},
        {"text": None, "label": "billing"},
        {"text": "three", "label": "shipping"},
        "",
        {"label": "account"},
        {"text": "five", "label": "pizza"},
        {"text": "six", "label": "account"},
    )
    ev = lines(tmp_path / "e.jsonl", {"text": "seven", "label": "billing"}, {"text": "eight", "label": "nope"})
    _, tok, data = prep(
        "tasks.0.preset=support",
        f"tasks.0.train={f}",
        f"tasks.0.eval={ev}",
        "data.on_bad_row=skip",
        "method.num_virtual_tokens=1",
        splits=("train", "eval"),
    )
    texts = [tok.decode(ex.input_ids[1:]) for ex in data[0].train]
    assert texts == ["one", "three", "six"] and [ex.labels for ex in data[0].train] == [1, 2, 0]
    assert [tok.decode(ex.input_ids[1:]) for ex in data[0].eval] == ["seven"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"ptune: tasks.0.train={str(f)!r}: left out 3 of 6 rows that do not fit the task (data.on_bad_row=skip); "
        "the first: line 2: field 'text' holds null, not text (used by tasks.0.template)",
        f"ptune: tasks.0.eval={str(ev)!r}: left out 1 of 2 rows that do not fit the task (data.on_bad_row=skip); "
        "the first: line 2: label 'nope' is not one of ['account', 'billing', 'shipping', 'technical'] "
        "(the labels of tasks.0)",
    ]
    # inferred labels come from the rows kept: B-MISC only tags a row whose tokens are not words
    ner = lines(
        tmp_path / "ner.jsonl",
        {"tokens": ["Bob", "ran"], "tags": ["B-PER", "O"]},
        {"tokens": [None, "x"], "tags": ["B-MISC", "O"]},
    )
    _, _, data = prep(
        "tasks.0.type=token_classification",
        "tasks.0.scoring=head",
        f"tasks.0.train={ner}",
        "data.on_bad_row=skip",
        "method.name=p_tuning_v2",
        model=MINI,
    )
    assert data[0].spec.labels == ["B-PER", "O"] and len(data[0].train) == 1
    assert [lab for lab in data[0].train[0].labels if lab != IGNORE] == [0, 1]


def test_skip_with_no_row_left_is_an_error(tmp_path):
    f = lines(tmp_path / "d.jsonl", {"text": None, "label": "billing"}, {"label": "billing"})
    with pytest.raises(
        DataError,
        match=r"d\.jsonl': none of the 2 rows fits the task .*the first: line 1: "
        r"field 'text' holds null",
    ):
        prep("tasks.0.preset=support", f"tasks.0.train={f}", "data.on_bad_row=skip")
    with pytest.raises(DataError, match=r"line 1: field 'tags' holds a str"):  # labels inferred from no row
        prep(
            "tasks.0.type=token_classification",
            "tasks.0.scoring=head",
            "data.on_bad_row=skip",
            f"tasks.0.train={lines(tmp_path / 'n.jsonl', {'tokens': ['a'], 'tags': 'O'})}",
            "method.name=p_tuning_v2",
            model=MINI,
        )


# -- ptune predict ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def light_session():
    """What predict_rows needs before any batch runs (config and encoders), from the tokenizer alone."""
    cfg, _, _, data = prepare(
        load_config([], [f"model.name_or_path={SMOL}", "tasks.0.preset=support", "tasks.0.name=support"]), splits=()
    )
    return SimpleNamespace(cfg=cfg, tasks=data)


def test_predict_input_rows_are_checked_and_named_by_line(tmp_path, light_session):
    f = lines(tmp_path / "in.jsonl", {"text": "fine"}, "", {"text": {"body": "hi"}})
    with pytest.raises(DataError, match=rf"--input {f} line 3: field 'text' holds an object .*, not text"):
        predict_rows(light_session, read_jsonl(f), f"--input {f}")
    f = lines(tmp_path / "in.jsonl", {"text": "fine"}, {"message": "hi"})
    with pytest.raises(DataError, match=rf"--input {f} line 2 has no field 'text' used by tasks\.0\.template"):
        predict_rows(light_session, read_jsonl(f), f"--input {f}")
    f = lines(tmp_path / "in.jsonl", {"text": "fine"}, "", "", '{"text": "no end')
    with pytest.raises(DataError, match=rf"--input {f} line 4: not valid JSON"):
        read_jsonl(f)
    f.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=rf"--input {f} line 2: byte 0xff at byte offset 25"):
        read_jsonl(f)


def no_model(*args, **kwargs):
    raise AssertionError("the model must not load before --output is checked")


@pytest.fixture
def fake_predict(monkeypatch):
    """predict_file without a model: one fixed result per input row."""
    monkeypatch.setattr("ptune_dist.inference.load_session", lambda *a, **k: "session")
    monkeypatch.setattr(
        "ptune_dist.inference.predict_rows", lambda s, rows, where: [{"label": "billing"} for _ in rows]
    )


def test_predict_output_is_checked_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("ptune_dist.inference.load_session", no_model)
    f = lines(tmp_path / "in.jsonl", {"text": "a"})
    before = f.read_bytes()
    (tmp_path / "a_file").write_text("x")
    for output, message in [
        (tmp_path, "is a folder"),
        (f, "is the --input file"),
        (tmp_path / "missing" / "out.jsonl", "is not an existing folder"),
        (tmp_path / "a_file" / "out.jsonl", "is not an existing folder"),
    ]:
        with pytest.raises(DataError, match=rf"--output {output}.*{message}.*nothing was written"):
            predict_file("some-run", f, str(output))
    assert f.read_bytes() == before


def test_predict_replaces_an_existing_file_only_with_force(tmp_path, fake_predict, capsys):
    f = lines(tmp_path / "in.jsonl", {"text": "a"}, {"text": "b"})
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(DataError, match=rf"--output {out} already exists .*pass --force"):
        predict_file("run", f, str(out))
    assert out.read_text() == "precious\n"
    predict_file("run", f, str(out), force=True)
    assert out.read_text() == '{"label": "billing"}\n' * 2
    assert capsys.readouterr().err == f"ptune predict: replaced the file {out} (--force)\n"
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    predict_file("run", f, str(empty))  # an empty file holds nothing to lose
    assert empty.read_text().count("\n") == 2 and capsys.readouterr().err == ""


def test_predict_writes_atomically(tmp_path, fake_predict, monkeypatch):
    f = lines(tmp_path / "in.jsonl", {"text": "a"})
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(DataError, match=rf"--output {out}: cannot write \(No space left on device\)"):
        predict_file("run", f, str(out), force=True)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left


def test_fixture_files_still_read(tmp_path):
    """The JSONL reader keeps what the datasets reader gave for well-formed files."""
    rows = read_jsonl(FIXTURES / "ner.jsonl")
    assert rows[0]["tokens"][0] == "Alice" and rows.where(1).endswith("line 2")


def test_predict_input_dev_null_holds_no_rows():
    with pytest.raises(DataError, match=r"--input /dev/null: no rows \(the file is empty\)"):
        read_jsonl("/dev/null")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_predict_output_device_write_error_names_output(tmp_path, fake_predict):
    f = lines(tmp_path / "in.jsonl", {"text": "a"})
    with pytest.raises(DataError, match=r"--output /dev/full: cannot write \(No space left on device\)"):
        predict_file("run", f, "/dev/full")


class BrokenStdout:
    def __init__(self, error):
        self.error = error

    def write(self, text):
        raise self.error

    def flush(self):
        pass

    def fileno(self):
        raise ValueError("no file descriptor")


def test_predict_stdout_closed_early_ends_quietly_and_a_full_disk_is_named(tmp_path, fake_predict, monkeypatch):
    f = lines(tmp_path / "in.jsonl", {"text": "a"})
    monkeypatch.setattr("sys.stdout", BrokenStdout(BrokenPipeError(32, "Broken pipe")))
    predict_file("run", f, "-")  # `| head`: the reader has what it wanted
    monkeypatch.setattr("sys.stdout", BrokenStdout(OSError(28, "No space left on device")))
    with pytest.raises(DataError, match=r"--output -: cannot write to stdout \(No space left on device\)"):
        predict_file("run", f, "-")
