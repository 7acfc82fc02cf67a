"""`ptune export` / `ptune import` never delete what they did not create: an existing target is refused
unless --force (then replaced, and said), a command never writes into its own input, and a refused
command leaves every file as it was. A run here is a final/ written from a fresh prompt table (only the
base's config is read, no weights)."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from conftest import SMOL
from ptune_dist.checkpoint import state
from ptune_dist.checkpoint.peft_format import Prompts, base_info
from ptune_dist.cli import main
from ptune_dist.config import load_config, to_yaml


def snapshot(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def run(tmp_path):
    cfg = load_config([], [f"model.name_or_path={SMOL}", "method.num_virtual_tokens=3", "tasks.0.preset=support"])
    state.save(tmp_path / "run" / "final", to_yaml(cfg), state.trainable_state(Prompts(cfg, base_info(cfg))))
    return tmp_path / "run"


def export(run, out, *extra):
    return main(["export", str(run), "--out", str(out), *extra])


def test_export_refuses_a_folder_with_files_and_force_replaces_it_saying_so(run, tmp_path, capsys):
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("my notes")
    assert export(run, notes) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "already exists" in err and "--force" in err and "notes.txt" in err
    assert (notes / "notes.txt").read_text() == "my notes"
    assert export(run, notes, "--force") == 0
    assert "replaced the folder" in capsys.readouterr().err
    assert {p.name for p in notes.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}


def test_export_refuses_a_file_and_force_leaves_no_hidden_copy(run, tmp_path, capsys):
    f = tmp_path / "adapter"
    f.write_text("a file of mine")
    assert export(run, f) == 2 and f.read_text() == "a file of mine"
    assert export(run, f, "--force") == 0
    assert "replaced the file" in capsys.readouterr().err
    assert f.is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("where", ["run", "run/final", "run/final/adapter", "."])
def test_export_never_writes_into_its_input(run, tmp_path, capsys, where):
    before = snapshot(tmp_path)
    out = tmp_path / where
    for extra in ([], ["--force"]):
        assert export(run, out, *extra) == 2
        assert "the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_export_into_a_new_or_empty_folder(run, tmp_path):
    (tmp_path / "empty").mkdir()
    assert export(run, tmp_path / "empty") == 0 and export(run, tmp_path / "new" / "adapter") == 0


def test_import_refuses_an_existing_final_unless_forced(run, tmp_path, capsys):
    assert export(run, tmp_path / "adapter") == 0
    before = snapshot(run)
    args = ["import", str(tmp_path / "adapter"), "--out", str(run), "tasks.0.preset=support"]
    assert main(args) == 2
    assert "final" in capsys.readouterr().err and snapshot(run) == before
    assert main(args + ["--force"]) == 0
    assert "replaced the folder" in capsys.readouterr().err
    assert main(["import", str(run / "final"), "--out", str(run), "--force"]) == 2  # its own input
    assert "the input" in capsys.readouterr().err


def test_export_refuses_links_the_current_folder_and_places_it_cannot_write(run, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("keep")
    (tmp_path / "link").symlink_to(other)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out, words in [
        (tmp_path / "link", "is a symbolic link"),
        (tmp_path / "dangling", "is a symbolic link"),
        (".", "the current folder"),
        ("", "the current folder"),
        (tmp_path / "file" / "sub", "is a file, not a folder"),
        ("/sys/ptune-test-export", "cannot write there"),
    ]:  # refused even to root
        assert export(run, out, "--force") == 2, out
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (out, err)
    assert (other / "data.txt").read_text() == "keep" and (work / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file", "link", "other", "run", "work"]


def adapter(tmp_path, config, embeddings) -> str:
    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(config)
    save_file({"prompt_embeddings": embeddings}, d / "adapter_model.safetensors")
    return str(d)


GOOD = f'{{"peft_type": "PROMPT_TUNING", "base_model_name_or_path": "{SMOL}"}}'


@pytest.mark.parametrize(
    "config, embeddings, extra, words",
    [
        ("[1]", torch.zeros(3, 576), [], "expected a JSON object"),
        (GOOD, torch.tensor(1.0), [], "a prompt is [virtual tokens >= 1, width]"),
        (GOOD, torch.zeros(0, 576), [], "a prompt is [virtual tokens >= 1, width]"),
        (GOOD, torch.full((3, 576), float("nan")), [], "hold NaN or inf"),
        ('{"peft_type": "PROMPT_TUNING"}', torch.zeros(3, 576), [], "names no base model"),
        (GOOD, torch.zeros(3, 576), ["output_dir=elsewhere"], "the run folder is --out"),
        (GOOD, torch.zeros(3, 576), ["method.name=prefix_tuning"], "imports as method.name=prompt_tuning"),
    ],
)
def test_import_names_what_is_wrong_with_the_adapter(tmp_path, capsys, config, embeddings, extra, words):
    assert main(["import", adapter(tmp_path, config, embeddings), "--out", str(tmp_path / "new"), *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()


def test_import_refuses_a_folder_holding_another_runs_checkpoints(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints" / "step-2").mkdir(parents=True)
    source = adapter(tmp_path, GOOD, torch.zeros(3, 576))
    assert main(["import", source, "--out", str(tmp_path / "run"), "--force", "tasks.0.preset=support"]) == 2
    assert "checkpoints/" in capsys.readouterr().err and not (tmp_path / "run" / "final").exists()
