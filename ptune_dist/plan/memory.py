"""Per-device peak memory of one training setup, as a breakdown, from the model's shapes alone.

The terms (bytes per device):

- frozen weights: the base in its dtype, or the blocks' linear layers packed by bitsandbytes (int8:
  1 byte a weight + one fp32 scale per output row; nf4/fp4: half a byte + one fp32 absmax per block
  of 64, or with double quantisation an 8-bit absmax plus one fp32 per 256 blocks); embeddings, the
  output head and the norms stay in the dtype. ZeRO-3 partitions them over the world; with
  parameter offload they live in host memory.
- ZeRO-3 gathered weights: what stage 3 holds gathered at once. DeepSpeed releases a gathered
  parameter only when more than `stage3_max_live_parameters` (default 1e9) are live and the next
  use is farther than `stage3_max_reuse_distance` (default 1e9); a frozen base is used again in the
  backward pass, so with the defaults everything up to 1e9 parameters stays gathered, plus one
  prefetch bucket (`stage3_prefetch_bucket_size`, default 5e7). Set both to small numbers
  (distributed.zero_extra) and only the largest module plus a bucket is live.
- trainable weights + optimizer: the prompt (and its encoder / projection) in fp32 master weights,
  its gradient and AdamW's two fp32 moments (16 bytes a parameter); ZeRO stages 1/2/3 partition the
  optimizer state / gradients / weights (DeepSpeed also keeps an fp32 copy of each partition), and
  optimizer offload moves that state to the host.
- activations: what autograd keeps for the backward pass when only the inputs need gradients (the
  base is frozen, so no linear layer keeps its input). Per layer: the two RMSNorm inputs in fp32,
  the rotated queries and the attention output, the keys/values the kernel sees (with `sdpa` the
  prefix is concatenated in front of every row's keys; the split/flash kernels keep it shared), the
  softmax log-sum-exp, and the MLP's gate and up projections (three intermediate-sized tensors
  without lean activations). With gradient checkpointing each layer keeps only its input, and the
  backward pass recomputes one layer at a time. bitsandbytes' int8 matmul keeps its input even for a
  frozen weight (the attention, o_proj, MLP and down_proj inputs), outside autograd's saved tensors,
  so for every layer with checkpointing too; the 4-bit matmul keeps only its packed weight.
- logits: the LM head runs on labelled positions only (classification: the answer position;
  generation: the label tokens), [rows, vocab] in fp32, kept twice (head output and log-softmax)
  plus their gradient.
- workspace: the transient tensors of the backward pass of one layer: the gradient arriving at the MLP's
  activation (intermediate-sized), the temporaries of its backward (BACKWARD_WORKSPACE more) and the
  layer's hidden-sized output gradient; with a quantised base, bitsandbytes' dequantised weight while a
  projection's backward runs (beside two intermediate-sized gradients), when that is larger.
- overlap: what never coexists, subtracted. The logits and their gradient are freed before the backward
  reaches the last layer, so the peak is the larger of the head's backward (logits) and a layer's
  (workspace, plus with checkpointing the recomputed layer): the smaller of the two is subtracted.
  Counted by the trace of the real step on a fake CUDA device (plan/trace.py, docs/plan_traced.md).
- runtime: what the process holds besides tensors (CUDA context and library workspaces on a GPU;
  on this CPU the calibrated constant of docs/plan.md).

What a method adds (its parameter count, its prompt's own activations, its depth, whether the base
trains) is its class's to say (ptune_dist/methods hooks); nothing here tests a method's name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ptune_dist.config.offload import check_offload
from ptune_dist.errors import ConfigError
from ptune_dist.kernels.auto import SHARED_PREFIX  # keep the prefix [Hkv, P, d] shared, no per-row copy
from ptune_dist.methods import PromptMethod, method_class

from .arch import Arch
from .request import Setup, method_section

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STORAGE_BYTES = {"uint8": 1, **DTYPE_BYTES}  # model.quant_storage: the tensors holding packed 4-bit weights
QUANTS = ("none", "int8", "nf4", "fp4")
# DeepSpeed's zero_optimization defaults (deepspeed/runtime/zero/config.py)
ZERO_DEFAULTS = {
    "stage3_max_live_parameters": 1e9,
    "stage3_max_reuse_distance": 1e9,
    "stage3_prefetch_bucket_size": 5e7,
    "stage3_param_persistence_threshold": 1e5,
}
# intermediate-sized [tokens, I] tensors one layer's backward makes beside the gradient arriving at the MLP's
# activation: the gate and up gradients and the temporaries of the SwiGLU backward. Measured (RSS of one MLP
# backward, above the live inputs): HF's MLP or the earlier lean backward 6; model/lean.py's in-place backward
# keeps one temporary (the sigmoid): 3. The trace on a fake CUDA device counts the same, plus the arriving
# gradient (7 and 4 live at once: docs/plan_traced.md)
BACKWARD_WORKSPACE = {True: 3, False: 6}  # by Setup.lean_activations


@dataclass
class Breakdown:
    frozen_weights: float = 0.0
    zero3_gathered: float = 0.0
    trainable: float = 0.0  # weights + gradients
    optimizer: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    workspace: float = 0.0
    runtime: float = 0.0
    overlap: float = 0.0  # logits vs a layer's backward: the smaller never coexists with the larger (subtracted)
    host: float = 0.0  # host memory for offloaded parts (not in the total)
    trainable_params: int = 0

    PARTS = (
        "frozen_weights",
        "zero3_gathered",
        "trainable",
        "optimizer",
        "activations",
        "logits",
        "workspace",
        "runtime",
    )

    @property
    def tensors(self) -> float:
        return sum(getattr(self, p) for p in self.PARTS if p != "runtime") - self.overlap

    @property
    def total(self) -> float:
        return self.tensors + self.runtime

    def as_dict(self) -> dict:
        return {**asdict(self), "tensors": self.tensors, "total": self.total}


# -- the method -----------------------------------------------------------------------------
def method_of(s: Setup) -> type[PromptMethod]:
    """The class of the setup's method, whose hooks answer for it (an unknown name is a ConfigError)."""
    return method_class(s.method.name)


# -- parameters -----------------------------------------------------------------------------
def trainable_params(arch: Arch, s: Setup) -> int:
    """Trainable parameters of one task's prompt (as ptune_dist.methods builds it), plus a head if any."""
    H = arch.hidden_size
    head = (H * s.head_classes + s.head_classes) if s.head_classes else 0
    return method_of(s).trainable_params(method_section(s), H, arch.kv_width, arch.total_params) + head


# -- weights --------------------------------------------------------------------------------
def linear_weight_bytes(arch: Arch, s: Setup) -> float:
    """Bytes of the blocks' linear weights (+ biases) as stored: dtype, int8 or 4-bit packed."""
    n, e = arch.block_linear_params, DTYPE_BYTES[s.dtype]
    biases = arch.block_linear_out_features * e if arch.bias else 0
    if s.quant == "none":
        return n * e + biases
    if s.quant == "int8":
        return n * 1 + arch.block_linear_out_features * 4 + biases  # int8 weights + fp32 row scales (SCB)
    blocks = n / 64
    scales = blocks * 1 + (blocks / 256) * 4 + 16 * arch.block_linear_count if s.quant_double else blocks * 4
    return n * 0.5 + scales + biases


def frozen_bytes_total(arch: Arch, s: Setup) -> float:
    """The whole frozen base as stored (a method that trains the base: nothing is frozen)."""
    if method_of(s).trains_base:
        return 0.0
    e = DTYPE_BYTES[s.dtype]
    other = arch.other_params - (arch.block_linear_out_features if arch.bias else 0)
    return linear_weight_bytes(arch, s) + other * e


def zero_setting(s: Setup, key: str) -> float:
    value = s.zero_extra.get(key, ZERO_DEFAULTS[key])
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"distributed.zero_extra.{key}={value!r}: expected a number") from None


def _zero3_gathered(arch: Arch, s: Setup, stored: float) -> float:
    """Bytes of gathered (full) frozen parameters live at once under ZeRO-3 (see the module docstring).

    DeepSpeed counts parameters by the elements of their stored tensors: a 4-bit base stored in a
    2-byte float (`quant_storage=bfloat16`) holds 4 weights per element."""
    if s.quant == "none":
        per_elem = stored / arch.total_params
        largest = max(arch.embedding_params, max(i * o for i, o in arch.linear_shapes())) * per_elem
    else:
        per_elem = STORAGE_BYTES[s.quant_storage]
        largest = arch.embedding_params * DTYPE_BYTES[s.dtype]  # the unquantised embedding is the largest
    live = zero_setting(s, "stage3_max_live_parameters")
    reuse = zero_setting(s, "stage3_max_reuse_distance")
    bucket = zero_setting(s, "stage3_prefetch_bucket_size")
    # a frozen base is used again in the backward pass: unless the reuse distance is short, nothing is
    # released before `live` parameters are gathered
    keep = live if reuse >= arch.layer_params else min(live, reuse)
    return min(stored, max(largest, (keep + bucket) * per_elem))


# -- activations ----------------------------------------------------------------------------
def sequence(s: Setup) -> tuple[int, int, int]:
    """(tokens per row the model runs on, keys per row, prefix length held as keys)."""
    P = method_of(s).placement.prefix_length(s.method.num_virtual_tokens)
    if P and s.max_length <= P:
        raise ConfigError(f"data.max_length={s.max_length} leaves no room after {P} virtual tokens")
    return method_of(s).placement.sequence(s.max_length, s.method.num_virtual_tokens)


def layer_activation_bytes(arch: Arch, s: Setup) -> float:
    """What autograd keeps of one transformer block for a frozen base (no checkpointing)."""
    B, e = s.batch_size, DTYPE_BYTES[s.dtype]
    T, Tk, P = sequence(s)
    N = B * T
    H, I, d = arch.hidden_size, arch.intermediate_size, arch.head_dim
    norms = 2 * N * H * 4 + 2 * N * 4  # RMSNorm keeps its input in fp32 (and the 1/rms)
    keys = Tk if (P and s.attention not in SHARED_PREFIX) else T
    attn = (
        2 * N * arch.num_heads * d * e  # rotated queries, attention output
        + 2 * B * arch.num_kv_heads * keys * d * e  # keys and values as the kernel sees them
        + N * arch.num_heads * 4
    )  # log-sum-exp
    if arch.gated_mlp:
        mlp_tensors = 2 if s.lean_activations else 3
    else:
        mlp_tensors = 1  # GELU's input
    mlp = mlp_tensors * N * I * e
    return norms + attn + mlp + int8_kept_input_bytes(arch, s)


def int8_kept_input_bytes(arch: Arch, s: Setup, checkpointed: bool = False) -> float:
    """bitsandbytes' int8 matmuls (MatMul8bitFp on CPU, MatMul8bitLt on GPU) keep their input A for the
    backward pass even when the weight is frozen: the attention and MLP inputs (one tensor each, shared
    by q/k/v and by gate/up), the down_proj input and the o_proj input, per layer. The o_proj input is
    the attention output, which the attention's backward keeps anyway, except in a checkpointed layer.
    They are kept as attributes of the autograd context (`ctx.A`, `ctx.tensors`), not through
    save_for_backward, so checkpointing's saved-tensor hooks never see them: with checkpointing they
    stay for every layer. The 4-bit matmul keeps only the packed weight."""
    if s.quant != "int8":
        return 0.0
    T, _, _ = sequence(s)
    width = 2 * arch.hidden_size + arch.intermediate_size + (arch.num_heads * arch.head_dim if checkpointed else 0)
    return s.batch_size * T * width * DTYPE_BYTES[s.dtype]


def activation_bytes(arch: Arch, s: Setup) -> float:
    T, _, _ = sequence(s)
    N, e = s.batch_size * T, DTYPE_BYTES[s.dtype]
    layer = layer_activation_bytes(arch, s)
    final_norm = N * arch.hidden_size * 4
    if s.gradient_checkpointing:
        kept = arch.num_layers * N * arch.hidden_size * e  # each block's input
        escaped = (arch.num_layers - 1) * int8_kept_input_bytes(arch, s, checkpointed=True)  # not freed
        return kept + escaped + layer + final_norm + packed_view_bytes(arch, s)  # + the block recomputed
    return arch.num_layers * layer + final_norm + method_activation_bytes(arch, s) + packed_view_bytes(arch, s)


def packed_view_bytes(arch: Arch, s: Setup) -> float:
    """Packed rows: the final hidden states gathered one sequence a row for the losses (model/unpack.py) and
    that view's gradient, counted as the row's own tokens (the view pads each sequence to the longest of the
    batch, so a batch mixing one long and many short examples takes more)."""
    if not s.packing:
        return 0.0
    T, _, _ = sequence(s)
    return 2 * s.batch_size * T * arch.hidden_size * DTYPE_BYTES[s.dtype]


def method_activation_bytes(arch: Arch, s: Setup) -> float:
    """What the prompt's own forward keeps (the method's `activation_bytes` hook)."""
    return method_of(s).activation_bytes(method_section(s), arch.hidden_size, arch.kv_width)


def logit_rows(s: Setup) -> int:
    T, _, _ = sequence(s)
    if s.task == "classification" or s.head_classes:
        return s.batch_size * (s.sequences_per_row if s.packing else 1)
    return s.batch_size * min(s.label_tokens, T)


def logits_bytes(arch: Arch, s: Setup) -> float:
    width = s.head_classes or arch.vocab_size
    return 3 * logit_rows(s) * width * 4


def workspace_bytes(arch: Arch, s: Setup) -> float:
    """One layer's backward: the gradient arriving at the MLP's activation and BACKWARD_WORKSPACE more
    intermediate-sized tensors, and the layer's output gradient [tokens, H]; with a quantised base, the
    dequantised weight of a projection's backward beside two intermediate-sized gradients, when larger."""
    T, _, _ = sequence(s)
    N, e = s.batch_size * T, DTYPE_BYTES[s.dtype]
    width = max(arch.intermediate_size, arch.hidden_size)
    ws = (1 + BACKWARD_WORKSPACE[s.lean_activations]) * N * width * e + N * arch.hidden_size * e
    if s.quant != "none":
        # bitsandbytes dequantises a linear layer's weight to the compute dtype for every matmul
        dequantised = max(i * o for i, o in arch.linear_shapes()) * DTYPE_BYTES[s.dtype]
        ws = max(ws, dequantised + 2 * N * width * e + N * arch.hidden_size * e)
    return ws


def overlap_bytes(arch: Arch, s: Setup, logits: float, workspace: float) -> float:
    """The head's backward (the logits and their gradient) ends before a layer's backward starts (its
    workspace, and with checkpointing the layer recomputed): the smaller of the two is never live with the
    larger, so it leaves the peak."""
    layer = workspace + (layer_activation_bytes(arch, s) if s.gradient_checkpointing else 0.0)
    return min(logits, layer)


# -- the whole device -----------------------------------------------------------------------
def check(arch: Arch, s: Setup) -> None:
    method_of(s)  # an unknown method.name is refused here
    if s.dtype not in DTYPE_BYTES:
        raise ConfigError(f"model.dtype={s.dtype!r} is not one of {list(DTYPE_BYTES)}")
    if s.quant not in QUANTS:
        raise ConfigError(f"model.quant={s.quant!r} is not one of {list(QUANTS)}")
    if s.batch_size < 1:
        raise ConfigError(f"data.batch_size={s.batch_size} must be > 0")
    if s.max_length < 1:
        raise ConfigError(f"data.max_length={s.max_length} must be > 0")
    if s.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"distributed.zero_stage={s.zero_stage} must be 0-3")
    check_offload(s)  # the rule config validation asks
    if arch.max_positions and s.max_length > arch.max_positions:
        raise ConfigError(f"data.max_length={s.max_length} exceeds the model's {arch.max_positions} positions")


def predict(arch: Arch, s: Setup, runtime: float = 0.0) -> Breakdown:
    """Predicted peak memory of one device (bytes), by part. `runtime`: the non-tensor overhead."""
    check(arch, s)
    w = max(1, s.world)
    zero = s.zero
    out = Breakdown(runtime=runtime)
    # frozen base
    stored = frozen_bytes_total(arch, s)
    if zero == 3:
        out.frozen_weights = 0.0 if s.offload_params else stored / w
        out.zero3_gathered = _zero3_gathered(arch, s, stored) if stored else 0.0
        out.host += stored / w if s.offload_params else 0.0
    else:
        out.frozen_weights = stored
    # trainable weights, gradients, optimizer state
    n = trainable_params(arch, s)
    out.trainable_params = n
    trains_base = method_of(s).trains_base
    if trains_base:
        pw = DTYPE_BYTES[s.dtype]  # the base trains in its own dtype
        state = 2 * pw if s.optimizer == "adamw" else 0.5
    else:
        pw, state = 4, (8 if s.optimizer == "adamw" else 0.5)  # fp32 master weights; AdamW: two fp32 moments
    if zero == 0:
        out.trainable = n * 2 * pw
        out.optimizer = n * state
    else:
        weights = n * pw / (w if zero == 3 else 1)
        grads = n * pw / (w if zero >= 2 else 1)
        opt = n * (state + 4) / w  # DeepSpeed keeps an fp32 copy of its partition besides the moments
        if zero == 3 and s.offload_params:
            out.host += weights
            weights = 0.0
        if s.offload_optimizer:
            out.host += opt
            opt = 0.0
        out.trainable, out.optimizer = weights + grads, opt
        if zero == 3 and n:  # the trainable parameters are gathered for use like the base
            out.zero3_gathered += n * pw * (1 - 1 / w) if not trains_base else 0.0
    # activations, logits, workspace (one micro-batch; accumulation adds nothing)
    out.activations = activation_bytes(arch, s)
    if trains_base:
        out.activations += _trained_base_extra(arch, s)
    out.logits = logits_bytes(arch, s)
    out.workspace = workspace_bytes(arch, s)
    out.overlap = overlap_bytes(arch, s, out.logits, out.workspace)
    return out


def _trained_base_extra(arch: Arch, s: Setup) -> float:
    """Trained weights also need every linear layer's input (one [tokens, H] or [tokens, I] each)."""
    T, _, _ = sequence(s)
    N, e = s.batch_size * T, DTYPE_BYTES[s.dtype]
    per_layer = sum(i for i, _ in arch.linear_shapes()) * N * e
    layers = 1 if s.gradient_checkpointing else arch.num_layers
    return layers * per_layer


__all__ = ["Setup", "Breakdown", "predict", "trainable_params", "frozen_bytes_total", "activation_bytes"]
