"""Shared fixtures: the embedded real models (loaded once per session) and small helpers.

The models come from `ptune fetch-models` (scripts/setup.sh runs it); nothing reaches a hub.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton's kernels (ours and DeepSpeed's, which test modules import) choose the interpreter when
    # triton is first imported: set it before any test module can import triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ptune_dist import embedded  # noqa: E402
from ptune_dist.config import load_config  # noqa: E402

SMOL = "embedded:smollm2-135m-instruct"
MINI = "embedded:all-minilm-l6-v2"
FIXTURES = Path(__file__).parent / "fixtures"
BENCH = Path(__file__).resolve().parent.parent / "bench"

torch.set_num_threads(2)


def _require(name: str) -> None:
    if not embedded.is_fetched(name):
        raise RuntimeError(
            f"embedded model {name} missing under {embedded.home()}: run scripts/setup.sh "
            "(it runs `ptune fetch-models`)"
        )


@pytest.fixture(scope="session")
def smol():
    """(model, info) of SmolLM2-135M-Instruct, frozen, fp32; tests must leave it as they found it."""
    _require("smollm2-135m-instruct")
    from ptune_dist.model.load import load_base

    return load_base(load_config([], [f"model.name_or_path={SMOL}"]).model)


@pytest.fixture(scope="session")
def mini():
    _require("all-minilm-l6-v2")
    from ptune_dist.model.load import load_base

    return load_base(load_config([], [f"model.name_or_path={MINI}", "model.dropout=0.0"]).model)


def session(overrides, base=None, splits=("train", "eval")):
    """A build_session for a config given as overrides (the base reused when given)."""
    from ptune_dist.train.session import build_session

    return build_session(load_config([], list(overrides)), splits=splits, base=base)


def bench_modules(*names: str) -> list:
    """bench/ scripts imported as modules (bench/ is on sys.path only while they import)."""
    sys.path.insert(0, str(BENCH))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(BENCH))


def markdown_rows(text: str) -> list[list[str]]:
    """The rows of a markdown table (header and rule left out), each a list of its stripped cells."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]
    return rows[2:]


def tiny_llama(
    folder: Path, hidden: int = 256, intermediate: int = 512, layers: int = 4, heads: int = 8, kv_heads: int = 2
) -> Path:
    """A small random-init Llama (GQA) saved as a HF folder with MiniLM's tokenizer, [SEP] as its EOS."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded.resolve(MINI))
    tok.eos_token = "[SEP]"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.trainable_parameters().items() if p.grad is not None}


def assert_close_rel(actual, expected, tol: float) -> None:
    """Equal up to `tol` of the largest magnitude in `expected` (fp32 sums in another order differ a little)."""
    scale = expected.abs().max().clamp(min=1e-12)
    err = (actual - expected).abs().max()
    assert err <= tol * scale, f"max difference {err:.3g} exceeds {tol} x {scale:.3g}"


def rank_pid(config_path, env_entry: str) -> int:
    """The PID of the training process started on `config_path` whose environment holds `env_entry`
    (e.g. RANK=1 under torchrun, SLURM_PROCID=1 under srun)."""
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if str(config_path).encode() in cmd and b"train" in cmd and env_entry.encode() in env:
            return int(pid)
    raise AssertionError(f"no process with {env_entry} training on {config_path}")
