"""What the planner knows of a model: its shapes, read from a HF config.json (never the weights).

`resolve_arch(name)` accepts an `embedded:` name, a local HF folder, or one of the built-in
descriptions below (so the planner's tables for 1B-70B models work offline). Parameter counts follow
the module structure of Llama-style decoders (and BERT-style encoders, roughly: biases, LayerNorm,
position embeddings), split into the parts the planner treats differently: the linear layers of the
transformer blocks (what bitsandbytes quantises) and everything else (embeddings, output head,
norms, biases), which stays in the model's dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ptune_dist.errors import ConfigError


@dataclass(frozen=True)
class Arch:
    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    gated_mlp: bool = True  # SwiGLU (Llama): gate, up, down; else up, down (BERT, GPT-2)
    bias: bool = False  # biases in the attention and MLP linears
    norm: str = "rms"  # rms (weight only) | layer (weight and bias)
    position_embeddings: int = 0  # learned absolute positions (BERT); 0 for RoPE
    type_vocab_size: int = 0
    max_positions: int = 0
    source: str = ""  # where the description came from

    # -- parameter counts ---------------------------------------------------------------------
    @property
    def kv_width(self) -> int:
        """Numbers per virtual token over all layers' keys and values (deep prompts)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one transformer block."""
        H, I, q, kv = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        )
        attn = [(H, q), (H, kv), (H, kv), (q, H)]
        mlp = [(H, I), (H, I), (I, H)] if self.gated_mlp else [(H, I), (I, H)]
        return attn + mlp

    @property
    def block_linear_params(self) -> int:
        """Weights (no biases) of the blocks' linear layers, all layers: what quantisation packs."""
        return self.num_layers * sum(i * o for i, o in self.linear_shapes())

    @property
    def block_linear_count(self) -> int:
        return self.num_layers * len(self.linear_shapes())

    @property
    def block_linear_out_features(self) -> int:
        return self.num_layers * sum(o for _, o in self.linear_shapes())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def other_params(self) -> int:
        """Everything but the blocks' linear weights: embeddings, output head, norms, biases."""
        H = self.hidden_size
        per_norm = H if self.norm == "rms" else 2 * H
        norms = (self.num_layers * 2 + 1) * per_norm  # + the final norm (decoders) or the embeddings' (BERT)
        emb = self.embedding_params + (self.position_embeddings + self.type_vocab_size) * H
        head = 0 if self.tied_embeddings else self.embedding_params
        biases = self.block_linear_out_features if self.bias else 0
        return emb + norms + head + biases

    @property
    def total_params(self) -> int:
        return self.block_linear_params + self.other_params

    @property
    def layer_params(self) -> int:
        return self.block_linear_params // self.num_layers


# -- reading configs ---------------------------------------------------------------------------
def from_hf_config(cfg: dict, name: str = "", source: str = "") -> Arch:
    """An Arch from the keys of a HF config.json (Llama, Mistral, Qwen2, SmolLM, BERT-likes, ...)."""

    def need(*keys):
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        raise ConfigError(f"model={name!r}: its config.json has no {keys[0]!r}; the planner needs it")

    model_type = str(cfg.get("model_type", ""))
    H = int(need("hidden_size", "n_embd", "d_model"))
    heads = int(need("num_attention_heads", "n_head"))
    L = int(need("num_hidden_layers", "n_layer"))
    act = str(cfg.get("hidden_act", cfg.get("hidden_activation", "")))
    gated = act in ("silu", "swiglu", "gelu_pytorch_tanh") and model_type not in ("bert", "roberta", "gpt2")
    if model_type in (
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "phi3",
        "olmo",
        "olmo2",
        "granite",
        "smollm3",
        "mixtral",
    ):
        gated = True
    bert = model_type in ("bert", "roberta", "distilbert", "electra")
    return Arch(
        name=name or str(cfg.get("_name_or_path", model_type)),
        model_type="bert" if bert else model_type,
        num_layers=L,
        hidden_size=H,
        intermediate_size=int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * H),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or H // heads),
        vocab_size=int(need("vocab_size")),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True if bert else False)),
        gated_mlp=gated,
        bias=bool(cfg.get("attention_bias", cfg.get("mlp_bias", bert))),
        norm="layer" if bert or model_type == "gpt2" else "rms",
        position_embeddings=int(cfg.get("max_position_embeddings", 0)) if bert else 0,
        type_vocab_size=int(cfg.get("type_vocab_size", 0)) if bert else 0,
        max_positions=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 0),
        source=source,
    )


def _llama(name, L, H, I, heads, kv, V, tied, source, max_positions=4096) -> Arch:
    return Arch(
        name=name,
        model_type="llama",
        num_layers=L,
        hidden_size=H,
        intermediate_size=I,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=H // heads,
        vocab_size=V,
        tied_embeddings=tied,
        max_positions=max_positions,
        source=source,
    )


# Published architecture hyper-parameters (the models' config.json on the Hugging Face hub).
BUILTIN: dict[str, Arch] = {
    a.name: a
    for a in [
        _llama("llama-3.2-1b", 16, 2048, 8192, 32, 8, 128256, True, "meta-llama/Llama-3.2-1B config.json", 131072),
        _llama("llama-3.2-3b", 28, 3072, 8192, 24, 8, 128256, True, "meta-llama/Llama-3.2-3B config.json", 131072),
        _llama("llama-2-7b", 32, 4096, 11008, 32, 32, 32000, False, "meta-llama/Llama-2-7b-hf config.json"),
        _llama("llama-3.1-8b", 32, 4096, 14336, 32, 8, 128256, False, "meta-llama/Llama-3.1-8B config.json", 131072),
        _llama("llama-2-13b", 40, 5120, 13824, 40, 40, 32000, False, "meta-llama/Llama-2-13b-hf config.json"),
        _llama("llama-65b", 80, 8192, 22016, 64, 64, 32000, False, "huggyllama/llama-65b config.json (LLaMA 1)", 2048),
        _llama("llama-2-70b", 80, 8192, 28672, 64, 8, 32000, False, "meta-llama/Llama-2-70b-hf config.json"),
        _llama("llama-3.1-70b", 80, 8192, 28672, 64, 8, 128256, False, "meta-llama/Llama-3.1-70B config.json", 131072),
        # ChatGLM-6B (GLM blocks: fused QKV + dense, GELU MLP 4H, word embeddings shared with the output layer)
        Arch(
            name="chatglm-6b",
            model_type="chatglm",
            num_layers=28,
            hidden_size=4096,
            intermediate_size=16384,
            num_heads=32,
            num_kv_heads=32,
            head_dim=128,
            vocab_size=130528,
            tied_embeddings=True,
            gated_mlp=False,
            bias=True,
            norm="layer",
            max_positions=2048,
            source="THUDM/chatglm-6b config.json",
        ),
    ]
}
ALIASES = {
    "llama-1b": "llama-3.2-1b",
    "llama-3b": "llama-3.2-3b",
    "llama-7b": "llama-2-7b",
    "llama-8b": "llama-3.1-8b",
    "llama-13b": "llama-2-13b",
    "llama-70b": "llama-2-70b",
}


def hf_config(arch: Arch) -> dict:
    """A Hugging Face config (config.json's keys) with `arch`'s shapes, for building the model without its
    files (plan/trace.py). Llama-style decoders only: the other built-in descriptions have no transformers
    class here."""
    if arch.model_type != "llama" or not arch.gated_mlp or arch.bias or arch.norm != "rms":
        raise ConfigError(
            f"model={arch.name!r}: the trace builds Llama-style decoders from a built-in description; "
            f"give this model's HF folder (its config.json) instead"
        )
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tied_embeddings,
        "max_position_embeddings": arch.max_positions or 4096,
        "rms_norm_eps": 1e-5,
    }


def builtin_names() -> list[str]:
    return sorted([*BUILTIN, *ALIASES])


def is_builtin(name: str) -> bool:
    """`name` is one of the built-in descriptions (or an alias): no config.json stands behind it."""
    return ALIASES.get(name.lower(), name.lower()) in BUILTIN


def resolve_arch(name_or_path: str, key: str = "model") -> Arch:
    """The Arch of a built-in name, an `embedded:` model or a local HF folder (its config.json only)."""
    from ptune_dist import embedded

    if is_builtin(name_or_path):
        return BUILTIN[ALIASES.get(name_or_path.lower(), name_or_path.lower())]
    try:
        path = Path(embedded.resolve(name_or_path)).expanduser()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"{key}={name_or_path!r}: {e}") from None
    config = path / "config.json" if path.is_dir() else path
    if not config.is_file() or config.name != "config.json":
        raise ConfigError(
            f"{key}={name_or_path!r}: not a built-in model ({', '.join(builtin_names())}), "
            "an embedded: model, a local HF folder with config.json, or a ptune config .yaml"
        )
    try:
        cfg = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{key}={name_or_path!r}: cannot read {config} ({e})") from None
    return from_hf_config(cfg, name=name_or_path, source=str(config))
