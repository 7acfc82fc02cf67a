"""The run configuration: dataclasses that omegaconf merges with YAML files and key=value overrides.

Every field says what it accepts, next to its declaration (the helpers live in ptune_dist/fields.py, re-exported
here; the `method` section is methods/config.py's MethodConfig or the Config of the method named, which
load.py resolves), and `load.validate` checks it by walking the dataclass tree:

- `choice(default, ...)`: only those strings;
- `number(default, ge=/gt=/le=/lt=)` (or `numbers(factory, ...)` for a list): the number's domain;
  a float is also refused as NaN or +-inf. Every int/float field has one, and every int an upper end
  (`le`, or `most=` one of the limits below, with why; tests/test_config.py checks both);
- `text(...)` / `literal=True` metadata: free text taken exactly as written; OmegaConf's `${...}`
  interpolation does not apply there (load.py keeps those values out of its reach).

`load.validate` then checks the combinations that cannot work; every error names the dotted key. Every
str / List[str] / Dict[str, List[str]] field holds text only (validate checks the leaves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ptune_dist.fields import GPUS, INT32, NODE_PROCS, NODES, RESTARTS, THREADS, TIMEOUT, choice, number, numbers, text
from ptune_dist.kernels.api import CHOICES as ATTENTION_IMPLS
from ptune_dist.methods import DEFAULT_METHOD, METHODS
from ptune_dist.methods.config import INITS, LABELS, RANDOM, VOCAB, MethodConfig


@dataclass
class ModelConfig:
    # a local HF folder, `embedded:<name>` (see `ptune fetch-models`) or a hub id where there is a network
    name_or_path: str = "embedded:smollm2-135m-instruct"
    kind: str = choice("auto", "causal_lm", "masked_lm", "encoder")
    dtype: str = choice("float32", "bfloat16", "float16")
    attention: str = choice(*ATTENTION_IMPLS)  # kernels implementation for prefix attention
    gradient_checkpointing: bool = False
    lean_activations: bool = True  # gated-SiLU MLPs keep 2 activations instead of 3 (same results)
    # None keeps the model's dropout; a number sets every dropout
    dropout: Optional[float] = number(None, ge=0, lt=1)
    # frozen base through bitsandbytes (docs/quant.md): the transformer blocks' linear layers are
    # quantised; embeddings, the output head and the soft prompt stay in `dtype` / fp32
    quant: str = choice("none", "int8", "nf4", "fp4")
    quant_double: bool = False  # 4-bit: quantise the block scales too (~0.4 bit/weight less)
    # 4-bit matmul dtype; auto: model.dtype (bf16 on a GPU: an fp32 matmul there is many times slower)
    quant_compute_dtype: str = choice("auto", "float32", "bfloat16", "float16")
    # 4-bit: dtype of the tensors holding the packed weights; bfloat16 is the QLoRA recipe for ZeRO-3/FSDP
    quant_storage: str = choice("uint8", "bfloat16", "float16", "float32")


@dataclass
class TaskConfig:
    name: str = "default"  # letters, digits, _ and - (it names metric keys and files)
    type: str = choice("classification", "generation", "token_classification")
    preset: str = ""  # built-in task or dataset format: see ptune_dist.data.presets
    train: str = ""  # file (.json/.jsonl/.csv/.parquet), `hub:<name>[:<config>]` or `builtin:<name>`
    eval: str = ""
    train_split: str = "train"
    eval_split: str = "validation"
    template: str = text()  # `{field}` inputs, `{soft}` virtual tokens, `{answer}` the answer slot
    verbalizer: Dict[str, List[str]] = text(factory=dict)  # label -> label words
    labels: List[str] = text(factory=list)  # label names, in order (head and token tasks)
    label_field: str = "label"
    scoring: str = choice("verbalizer", "head")
    pooling: str = choice("auto", "cls", "mean", "last")  # sequence-classification head input
    tokens_field: str = "tokens"  # token classification
    tags_field: str = "tags"
    target_field: str = "output"  # generation with a template
    chat_template: str = choice("auto", "always", "never")  # generation without a template
    max_new_tokens: int = number(32, gt=0, most=INT32)


@dataclass
class DataConfig:
    max_length: int = number(256, gt=0, most=INT32)  # tokens per example, virtual tokens included
    truncation: str = choice("error", "right", "left")  # what an over-long input field gets
    padding_side: str = choice("right", "left")
    batch_size: int = number(8, gt=0, most=INT32)  # per process and micro-batch
    eval_batch_size: int = number(16, gt=0, most=INT32)
    max_train_examples: int = number(0, ge=0, meaning="0: all", most=INT32)
    max_eval_examples: int = number(0, ge=0, meaning="0: all", most=INT32)
    # a row that does not fit its task (a field missing, not text, a label unknown): error names the file,
    # line and field; skip leaves it out and reports how many were left out
    on_bad_row: str = choice("error", "skip")
    # examples packed end to end in rows (data/packing.py): no padding between them, none attending to
    # another, each with its own positions and prompt; a row holds data.max_length tokens (deep prompts:
    # data.max_length - method.num_virtual_tokens, the prefix in front of each sequence being the rest).
    # Training, evaluation and predict (classification, token classification) pack; batch_size and
    # eval_batch_size then count rows. Generation's decoding stays one example a row.
    packing: bool = False


@dataclass
class TrainConfig:
    steps: int = number(100, ge=0, meaning="0: evaluate only", most=INT32)  # optimizer steps
    optimizer: str = choice("adamw", "adafactor")
    # the bound only catches typos: beyond ~1e37 AdamW's step size overflows fp32 with a raw error
    lr: float = number(3e-2, gt=0, le=1e3)
    weight_decay: float = number(0.0, ge=0)
    betas: List[float] = numbers(lambda: [0.9, 0.999], ge=0, lt=1)  # AdamW's (beta1, beta2)
    schedule: str = choice("linear", "constant", "cosine")
    warmup_steps: int = number(0, ge=0, most=INT32)  # <= steps (validate)
    grad_accum: int = number(1, gt=0, most=INT32)
    max_grad_norm: float = number(1.0, ge=0, meaning="0: no clipping")
    seed: int = number(0, ge=0, le=2**32 - 1)  # torch and Python generators; within what every one of them takes
    log_every: int = number(10, gt=0, most=INT32)
    eval_every: int = number(0, ge=0, meaning="0: only at the end", most=INT32)
    eval_at_start: bool = False  # evaluate the initial prompt before step 1
    eval_baseline: bool = False  # evaluate the frozen base without any prompt (the untuned number) first
    save_every: int = number(0, ge=0, meaning="0: only at the end", most=INT32)
    keep_checkpoints: int = number(2, gt=0, most=INT32)
    # auto (newest complete checkpoint in output_dir) | never | a checkpoint folder (validate: it exists)
    resume: str = "auto"
    progress_bar: bool = True
    tensorboard: bool = True
    threads: int = number(0, ge=0, meaning="0: torch's default", most=THREADS)  # torch intra-op threads
    # a non-finite loss or gradient: stop the run with an error (nothing non-finite is saved), or skip
    # that update (counted in metrics.jsonl) and stop only after train.max_skipped_steps in a row
    on_nonfinite: str = choice("stop", "skip")
    max_skipped_steps: int = number(10, gt=0, most=INT32)
    # where this rank runs: auto = its own GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU
    device: str = choice("auto", "cpu", "cuda")


@dataclass
class DistributedConfig:
    engine: str = choice("torch", "deepspeed")  # torch: plain data parallel; deepspeed: ZeRO
    zero_stage: int = number(0, ge=0, le=3)  # with engine=deepspeed
    offload_optimizer: bool = False  # stages 2-3: optimizer state in CPU memory
    offload_params: bool = False  # stage 3: parameters in CPU memory
    # a collective waiting longer ends the run (a dead rank must not hang the others)
    timeout_s: int = number(300, gt=0, most=TIMEOUT)
    # more zero_optimization settings for DeepSpeed, e.g. {stage3_max_live_parameters: 1000000,
    # stage3_max_reuse_distance: 0, stage3_prefetch_bucket_size: 0} to release gathered weights at once
    zero_extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LaunchConfig:
    backend: str = choice("local", "slurm")
    launcher: str = choice("torchrun", "deepspeed")  # what starts the ranks of the local backend
    nproc_per_node: int = number(1, gt=0, most=NODE_PROCS)
    nnodes: int = number(1, gt=0, most=NODES)
    node_rank: int = number(0, ge=0, most=NODES)  # local multi-node: this machine's place (< nnodes, validate)
    # local multi-node: host:port of node 0 (hostname, IPv4 or [IPv6]); needed when nnodes > 1
    rdzv_endpoint: str = ""
    # OMP_NUM_THREADS of each rank
    threads_per_proc: int = number(0, ge=0, meaning="0: the node's cores / processes", most=THREADS)
    # a rank that died (a signal, a crash) or a peer that stopped answering (exit train.preempt.RANK_FAULT):
    # restart every rank from the newest complete checkpoint (train.resume=auto), at most this many times
    # per run, locally and inside a Slurm allocation (a requeue after a lost node counts too); a config or
    # data error, a non-finite stop, Ctrl-C, a preemption or an ordinary error is never retried. 0: never.
    max_restarts: int = number(3, ge=0, most=RESTARTS)
    # Slurm (values are validated before they reach the script; see launcher/shell.py)
    job_name: str = "ptune"
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "01:00:00"
    gpus_per_node: int = number(0, ge=0, meaning="0: a CPU job", most=GPUS)
    cpus_per_task: int = number(0, ge=0, meaning="0: threads_per_proc, or 1", most=THREADS)
    mem: str = ""
    constraint: str = ""
    sbatch_extra: List[str] = field(default_factory=list)  # more sbatch options, e.g. --exclusive
    setup: List[str] = field(default_factory=list)  # shell lines before the run, e.g. module load cuda/12.4
    python: str = ""  # the interpreter on the nodes; "" = this one
    # USR1 this long before the time limit: checkpoint, requeue, resume (Slurm's --signal takes 0-65535)
    signal_seconds: int = number(120, ge=0, le=65535)
    log_dir: str = ""  # "" = output_dir/slurm


@dataclass
class SweepConfig:
    grid: Dict[str, List[str]] = field(default_factory=dict)  # dotted key -> values, one cell per combination


@dataclass
class StudyHardware:
    """The cluster `ptune study` plans each cell for (study/resources.py asks `ptune plan` per cell)."""

    gpus_per_node: int = number(8, gt=0, most=GPUS)
    max_nodes: int = number(1, gt=0, most=NODES)  # more than 1: a cell may take several full nodes (Slurm)
    # memory of one GPU, a size with its unit (80GB, 80GiB); "" = no planning: the cells keep the config's resources
    gpu_mem: str = ""


@dataclass
class StudyConfig:
    """`ptune study` (ptune_dist/study): the power-of-scale grid, three comparisons that share their cells,
    each over the config's tasks (one cell per task) and the seeds:
      main    models x methods, at prompt_length and init
      length  models x prompt_lengths, for ablation_method at init
      init    models x inits, for ablation_method at prompt_length
    A method that takes no init (or not this one) runs at init=random; the baselines (no learned placement) have
    neither."""

    models: List[str] = text(factory=list)  # model.name_or_path of each size, e.g. embedded:..., a folder, a hub id
    methods: List[str] = field(default_factory=lambda: list(METHODS))  # every method, the baselines included
    prompt_length: int = number(100, gt=0, most=INT32)  # Lester et al.'s main setting
    init: str = choice(LABELS, *INITS)
    prompt_lengths: List[int] = numbers(lambda: [1, 5, 20, 100, 150], gt=0)
    inits: List[str] = field(default_factory=lambda: [RANDOM, VOCAB, LABELS])
    ablation_method: str = choice(DEFAULT_METHOD, *METHODS)  # prompt tuning
    seeds: List[int] = numbers(lambda: [0, 1, 2], ge=0, meaning="train.seed of each repeat")
    # more key=value settings for the cells of one method, one model, or one 'MODEL|METHOD' (applied in that
    # order), e.g. method_overrides: {METHOD: [train.lr=1e-5]}; model_overrides: {big/model: [model.quant=int8]}
    method_overrides: Dict[str, List[str]] = field(default_factory=dict)
    model_overrides: Dict[str, List[str]] = text(factory=dict)
    retries: int = number(1, ge=0, le=100)  # a failed cell runs again this many times (locally; Slurm: rerun)
    # with hardware.gpu_mem: each cell's GPUs, base, engine and micro-batch as `ptune plan` picks them for its size
    hardware: StudyHardware = field(default_factory=StudyHardware)
    # examples per optimizer step over all of a cell's GPUs, whatever GPU count the plan gives it (needs
    # hardware.gpu_mem): data.batch_size x train.grad_accum x GPUs = global_batch
    global_batch: int = number(0, ge=0, meaning="0: data.batch_size stays the batch per device", most=INT32)


@dataclass
class RunConfig:
    output_dir: str = "runs/default"  # not empty (validate)
    model: ModelConfig = field(default_factory=ModelConfig)
    # resolved by method.name into that method's own Config (a MethodConfig subclass: methods/config.py, load.py)
    method: MethodConfig = field(default_factory=MethodConfig)
    tasks: List[TaskConfig] = field(default_factory=lambda: [TaskConfig()])
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
