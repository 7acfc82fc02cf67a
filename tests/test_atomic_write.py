"""One atomic write in the source (ptune_dist/nofollow.py write_atomic and its rename, publish):
no other module renames or replaces a file, and the write is durable (file and folder fsynced), takes the
umask's mode, survives a crash before its rename with the old file whole, and refuses a link."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ptune_dist import nofollow
from ptune_dist.errors import PtuneError

ROOT = Path(__file__).resolve().parents[1]
THE_MODULE = "ptune_dist/nofollow.py"
RENAME = re.compile(r"\.(?:rename|replace)\s*\(")  # os.replace, os.rename, Path.rename, Path.replace
NOT_A_RENAME = re.compile(
    r"\.replace\(\s*[rbf]?[\"']|dataclasses\.replace\(|\b(?:message|text|line|key|remedy)\.replace\(.*"
)
# a str.replace (a literal first argument, or a text variable and what it chains), dataclasses.replace


def renames() -> list[str]:
    found = []
    for top in ("ptune_dist", "launcher", "kernels", "slurm", "bench", "scripts"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".py", ".sh") or ".venv" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if rel != THE_MODULE and RENAME.search(NOT_A_RENAME.sub("", code)):
                    found.append(f"{rel}:{n}: {line.strip()}")
    return found


def test_one_module_renames_files():
    assert not renames(), (
        "rename files only through ptune_dist/nofollow.py (write_atomic for a "
        "file's content, publish for a finished file or folder):\n" + "\n".join(renames())
    )


def test_the_grep_finds_a_rename(tmp_path):
    """The pattern above is not blind: each form of rename is found, string and dataclass replaces are not."""
    for code in ("os.replace(a, b)", "os.rename(a, b)", "tmp.rename(final)", "Path(t).replace(final)"):
        assert RENAME.search(NOT_A_RENAME.sub("", code)), code
    for code in (
        'text.replace("a", "b")',
        "dataclasses.replace(cfg, x=1)",
        "t._replace(**given)",
        "replace(cfg, model=m)",
        "x.replace('a', 'b')",
        "message.replace(token, value)",
    ):
        assert not RENAME.search(NOT_A_RENAME.sub("", code)), code


@pytest.fixture
def synced(monkeypatch):
    """Every os.fsync: the file or folder it synced (by fd -> path)."""
    seen = []
    real = os.fsync

    def fsync(fd):
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_write_fsyncs_the_file_and_its_folder(tmp_path, synced):
    target = tmp_path / "results.json"
    nofollow.write_atomic(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert len(synced) == 2 and synced[0].parent == tmp_path and synced[0].name.startswith(".results.json.")
    assert synced[1] == tmp_path  # the rename, on disk
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o027])
def test_mode_follows_the_umask(tmp_path, mask):
    target = tmp_path / "f.txt"
    target.write_text("old")
    os.chmod(target, 0o600)
    old = os.umask(mask)
    try:
        nofollow.write_atomic(target, b"new")
        nofollow.write_atomic(tmp_path / "g.txt", b"new")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "g.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_crash_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("old\n")

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies between the temporary file and its rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        nofollow.write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # the temporary file removed


def test_a_link_at_the_target_is_refused(tmp_path):
    elsewhere = tmp_path / "notes.txt"
    elsewhere.write_text("mine\n")
    link = tmp_path / "out.txt"
    link.symlink_to(elsewhere)
    with pytest.raises(PtuneError, match="symbolic link"):
        nofollow.write_atomic(link, "overwritten\n")
    assert elsewhere.read_text() == "mine\n" and link.is_symlink()


def test_publish_moves_a_folder_and_syncs_its_parent(tmp_path, synced):
    tmp = tmp_path / ".model.tmp"
    tmp.mkdir()
    (tmp / "READY").write_text("ok\n")
    nofollow.publish(tmp, tmp_path / "model")
    assert (tmp_path / "model" / "READY").read_text() == "ok\n" and not tmp.exists()
    assert synced == [tmp_path]
