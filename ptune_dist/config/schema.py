"""The run configuration: dataclasses that omegaconf merges with YAML files and key=value overrides.

A field with `choices` metadata accepts only those strings; `load.validate` checks them and the
combinations that cannot work, and every error names the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ptune_dist.kernels import CHOICES as ATTENTION_IMPLS
from ptune_dist.methods import METHODS


def choice(default: str, *choices: str):
    return field(default=default, metadata={"choices": (default, *[c for c in choices if c != default])})




@dataclass
class ModelConfig:
    # a local HF folder, `embedded:<name>` (see `ptune fetch-models`) or a hub id where there is a network
    name_or_path: str = "embedded:smollm2-135m-instruct"
    kind: str = choice("auto", "causal_lm", "masked_lm", "encoder")
    dtype: str = choice("float32", "bfloat16", "float16")
    attention: str = choice(*ATTENTION_IMPLS)  # kernels implementation for prefix attention
    gradient_checkpointing: bool = False
    lean_activations: bool = True  # gated-SiLU MLPs keep 2 activations instead of 3 (same results)
    dropout: Optional[float] = None  # None keeps the model's dropout; a number sets every dropout
    # frozen base through bitsandbytes (docs/quant.md): the transformer blocks' linear layers are
    # quantised; embeddings, the output head and the soft prompt stay in `dtype` / fp32
    quant: str = choice("none", "int8", "nf4", "fp4")
    quant_double: bool = False  # 4-bit: quantise the block scales too (~0.4 bit/weight less)
    quant_compute_dtype: str = choice("float32", "bfloat16", "float16")  # 4-bit matmul dtype
    # 4-bit: dtype of the tensors holding the packed weights; bfloat16 is the QLoRA recipe for ZeRO-3/FSDP
    quant_storage: str = choice("uint8", "bfloat16", "float16", "float32")


@dataclass
class MethodConfig:
    name: str = choice("prompt_tuning", *METHODS)
    num_virtual_tokens: int = 20
    # shallow prompts and the prefix-tuning embedding: random | vocab (sampled) | text | labels
    init: str = choice("random", "vocab", "text", "labels")
    init_text: str = ""
    init_scale: float = 0.5  # uniform range for random token embeddings; std for random deep prefixes
    encoder: str = choice("mlp", "lstm")  # P-tuning's prompt encoder
    encoder_hidden_size: int = 0  # 0: the model's hidden size
    projection: Optional[bool] = None  # deep prompts through an MLP (None: prefix_tuning yes, p_tuning_v2 no)
    projection_hidden_size: int = 512


@dataclass
class TaskConfig:
    name: str = "default"
    type: str = choice("classification", "generation", "token_classification")
    preset: str = ""  # built-in task or dataset format: see ptune_dist.data.presets
    train: str = ""  # file (.json/.jsonl/.csv/.parquet), `hub:<name>[:<config>]` or `builtin:<name>`
    eval: str = ""
    train_split: str = "train"
    eval_split: str = "validation"
    template: str = ""  # `{field}` inputs, `{soft}` virtual tokens, `{answer}` the answer slot
    verbalizer: Dict[str, List[str]] = field(default_factory=dict)  # label -> label words
    labels: List[str] = field(default_factory=list)  # label names, in order (head and token tasks)
    label_field: str = "label"
    scoring: str = choice("verbalizer", "head")
    pooling: str = choice("auto", "cls", "mean", "last")  # sequence-classification head input
    tokens_field: str = "tokens"  # token classification
    tags_field: str = "tags"
    target_field: str = "output"  # generation with a template
    chat_template: str = choice("auto", "always", "never")  # generation without a template
    max_new_tokens: int = 32


@dataclass
class DataConfig:
    max_length: int = 256  # tokens per example, virtual tokens included
    truncation: str = choice("error", "right", "left")  # what an over-long input field gets
    padding_side: str = choice("right", "left")
    batch_size: int = 8  # per process and micro-batch
    eval_batch_size: int = 16
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 0


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps
    optimizer: str = choice("adamw", "adafactor")
    lr: float = 3e-2
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = choice("linear", "constant", "cosine")
    warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    eval_at_start: bool = False  # evaluate the initial prompt before step 1
    eval_baseline: bool = False  # evaluate the frozen base without any prompt (the untuned number) first
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto (newest complete checkpoint in output_dir) | never | a checkpoint folder
    progress_bar: bool = True
    tensorboard: bool = True
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # where this rank runs: auto = its own GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU
    device: str = choice("auto", "cpu", "cuda")


@dataclass
class DistributedConfig:
    engine: str = choice("torch", "deepspeed")  # torch: plain data parallel; deepspeed: ZeRO
    zero_stage: int = 0  # 0-3, with engine=deepspeed
    offload_optimizer: bool = False  # stages 2-3: optimizer state in CPU memory
    offload_params: bool = False  # stage 3: parameters in CPU memory
    timeout_s: int = 300  # a collective waiting longer ends the run (a dead rank must not hang the others)
    # more zero_optimization settings for DeepSpeed, e.g. {stage3_max_live_parameters: 1000000,
    # stage3_max_reuse_distance: 0, stage3_prefetch_bucket_size: 0} to release gathered weights at once
    zero_extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LaunchConfig:
    backend: str = choice("local", "slurm")
    launcher: str = choice("torchrun", "deepspeed")  # what starts the ranks of the local backend
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0  # local multi-node: this machine's place
    rdzv_endpoint: str = ""  # local multi-node: host:port of node 0
    threads_per_proc: int = 0  # OMP_NUM_THREADS of each rank; 0: the node's cores / processes
    # Slurm (values are validated before they reach the script; see launcher/shell.py)
    job_name: str = "ptune"
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "01:00:00"
    gpus_per_node: int = 0
    cpus_per_task: int = 0  # 0: threads_per_proc, or 1
    mem: str = ""
    constraint: str = ""
    sbatch_extra: List[str] = field(default_factory=list)  # more sbatch options, e.g. --exclusive
    setup: List[str] = field(default_factory=list)  # shell lines before the run, e.g. module load cuda/12.4
    python: str = ""  # the interpreter on the nodes; "" = this one
    signal_seconds: int = 120  # USR1 this long before the time limit: checkpoint, requeue, resume
    log_dir: str = ""  # "" = output_dir/slurm


@dataclass
class SweepConfig:
    grid: Dict[str, List[str]] = field(default_factory=dict)  # dotted key -> values, one cell per combination


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    tasks: List[TaskConfig] = field(default_factory=lambda: [TaskConfig()])
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
