"""The training step of a run traced on a fake CUDA device: the peak of live GPU bytes, by category.

    trace_step(cfg, hf_config=None, label_tokens=None, steps=2) -> Trace

No weight is read and no memory is allocated: every tensor is a FakeTensor (shapes, dtypes, devices),
and LiveBytes (live_bytes.py) records each storage made on `cuda:0` from the op that makes it until it
dies. The run is built the way `ptune train` builds it, on one rank:

- the base from its config.json (or `hf_config`, e.g. a built-in planner shape), made and quantised by
  fake_base.py as load_base would (transformers' bitsandbytes quantizer, bitsandbytes' own quantisation
  functions and layers);
- the PromptModel from ptune's build_model, with method.init=random (the prompt's values do not change its
  memory): its prompts are made on the CPU from seeded generators; build_model's last step, moving them and
  the heads to the device in fp32, is taken here inside the fake mode (a module made inside a FakeTensorMode
  cannot be moved: torch swaps a fake parameter, and a fake tensor carries a weak reference);
- the engine from train/loop.py's make_engine (TorchEngine; DeepSpeed cannot run on fake tensors: it
  picks its accelerator and allocates its buffers itself), its optimizer and schedule;
- a batch of the planned shape: data.batch_size rows (the micro-batch) of data.max_length tokens less a
  deep prefix, no padding, made by data/collate.py from examples of the task type: one answer position
  per row (classification), `label_tokens` labelled tokens at the end of each row (generation; default
  the planner's data.max_length / 4), every token labelled (token classification);
- `steps` updates of the training loop's own `train/update.py` (the batch described on the host from its CPU
  tensors, data/host.py, as the loop's prefetch does; the loss weights from its target count; the batch moved
  to the device, device.to_device's copy without its pinning of host memory: it is not GPU memory, and a fake
  tensor cannot be pinned; engine.forward(...).loss * weight, engine.backward, engine.step).

The peak is taken after loading (the base's weights are in it, loading's transients are not, as
torch.cuda.reset_peak_memory_stats after load_base), and the second step's peak holds the optimizer
state. On a CPU-only torch the trace runs in a child process started with the fake device
(fake_cuda.py); with a CUDA build of torch it runs here.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import ConfigError
from ptune_dist.methods.config import RANDOM
from ptune_dist.methods.placement import Placement

from . import fake_cuda
from .live_bytes import CATEGORIES

DEVICE = "cuda:0"


# torch picks SDPA's kernel in C++ from the device's properties; a CPU-only torch has none for CUDA and runs the
# math fallback on a fake CUDA device (fp32 scores and probabilities kept for the backward), which a GPU does not
SDPA_NOTE = (
    "attention ran as torch's SDPA math fallback (a CPU-only torch cannot pick a CUDA kernel for a fake "
    "device): its [B, H, T, T] probabilities are counted, a GPU's fused kernels keep none; trace with a "
    "CUDA build of torch, or a kernel that is a ptune custom op (model.attention=triton)"
)


class NotTraceable(ConfigError):
    """The step ran an operation a fake tensor cannot answer (it needs a tensor's value on the host)."""


@dataclass
class Trace:
    peak: int  # live bytes at the peak of the steps (after loading)
    parts: dict  # CATEGORIES -> bytes at that peak; they add up to `peak`
    peak_region: str  # where the peak happened (live_bytes.REGIONS)
    loaded: dict  # CATEGORIES -> bytes alive after loading and building the prompts
    load_peak: int  # the peak while loading and quantising
    steps: int
    seconds: float
    attention: str = ""  # the attention implementation the model's calls resolve to
    host_rss: int = 0  # what the tracing process's resident memory grew by over the trace (no device memory)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def trace_step(
    cfg: RunConfig, hf_config=None, label_tokens: int | None = None, steps: int = 2, timeout: float | None = None
) -> Trace:
    """Trace `steps` training steps of `cfg` on one rank (see the module docstring). `hf_config`: the base's
    transformers config or its dict (default: read from model.name_or_path)."""
    out = trace_steps([(cfg, hf_config, label_tokens)], steps, timeout)[0]
    if isinstance(out, Exception):
        raise out
    return out


def trace_steps(requests: list, steps: int = 2, timeout: float | None = None) -> list:
    """trace_step for each (cfg, hf_config, label_tokens) of `requests`, in one child process when one is
    needed; each answer is a Trace or the exception that stopped it (ConfigError, NotTraceable, RuntimeError)."""
    from ptune_dist.config import to_yaml

    answers: list = [None] * len(requests)
    todo = []
    for i, (cfg, hf_config, label_tokens) in enumerate(requests):
        try:
            check_traceable(cfg)
            todo.append(i)
        except ConfigError as e:
            answers[i] = e
    if fake_cuda.ready():
        for i in todo:
            answers[i] = traced(*requests[i], steps)
        return answers
    if not todo:
        return answers
    items = []
    for i in todo:
        cfg, hf_config, label_tokens = requests[i]
        config = hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config
        items.append({"config": to_yaml(cfg), "hf_config": config, "label_tokens": label_tokens})
    kinds = {"NotTraceable": NotTraceable, "ConfigError": ConfigError}
    for i, answer in zip(todo, fake_cuda.run_child({"items": items, "steps": steps}, timeout=timeout)["answers"]):
        answers[i] = (
            Trace(**answer["trace"]) if "trace" in answer else kinds.get(answer["kind"], RuntimeError)(answer["error"])
        )
    return answers


def traced(cfg: RunConfig, hf_config, label_tokens: int | None, steps: int):
    """trace_here's Trace, or the exception that stopped it (one setup's failure is its answer; the others still
    run): a PtuneError as it was raised, anything else as a RuntimeError saying where in ptune it happened."""
    from ptune_dist.errors import PtuneError

    try:
        return trace_here(cfg, hf_config, label_tokens, steps)
    except PtuneError as e:
        return e
    except Exception as e:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e} (at {where(e)})")


def check_traceable(cfg: RunConfig) -> None:
    """Refuse, naming the key, what the trace cannot run."""
    if cfg.distributed.engine != "torch":
        raise ConfigError(
            f"distributed.engine={cfg.distributed.engine}: the trace runs the plain engine only; "
            "DeepSpeed chooses its accelerator and allocates its own buffers, which fake tensors "
            "cannot stand in for"
        )
    if cfg.data.packing:
        raise ConfigError("data.packing=true: the trace builds padded-row batches only")
    if cfg.model.quant == "int8":
        raise ConfigError(
            "model.quant=int8: bitsandbytes' int8 matmul picks outlier columns by their values (an "
            "output whose shape depends on the data), which a fake tensor cannot have"
        )
    if len({t.type for t in cfg.tasks}) != 1:
        raise ConfigError("tasks: the trace needs tasks of one type")
    if cfg.train.optimizer != "adamw":
        raise ConfigError(
            f"train.optimizer={cfg.train.optimizer}: torch's Adafactor reads norms on the host in every "
            "step, which a fake tensor cannot give; the trace runs train.optimizer=adamw (the same "
            "memory but for Adafactor's smaller, factored state)"
        )


# -- the run, built on the fake device ------------------------------------------------------------------
def base_config(cfg: RunConfig, hf_config):
    """(transformers config, model kind)."""
    if hf_config is None:
        from ptune_dist.model.inspect import inspect_base

        inspected = inspect_base(cfg.model)
        return inspected.config, inspected.kind
    if isinstance(hf_config, dict):
        from transformers import AutoConfig

        values = {k: v for k, v in hf_config.items() if k != "model_type" and not k.startswith("_")}
        hf_config = AutoConfig.for_model(hf_config["model_type"], **values)
    from ptune_dist.model.inspect import resolve_kind

    return hf_config, resolve_kind(hf_config, cfg.model.kind, cfg.model.name_or_path)


def task_specs(cfg: RunConfig, vocab_size: int) -> list:
    """One TaskSpec per task of the config, without a tokenizer: label words stand in as distinct ids."""
    from ptune_dist.data.task import TaskSpec

    specs = []
    for task in cfg.tasks:
        labels = list(task.labels) or list(task.verbalizer) or ["0", "1"]
        words = [list(task.verbalizer.get(label, [label])) for label in labels]
        ids, next_id = [], 3
        for ws in words:
            ids.append(list(range(next_id, next_id + len(ws))))
            next_id += len(ws)
        if next_id >= vocab_size:
            raise ConfigError(f"tasks.{task.name}: more label words than the vocabulary holds")
        specs.append(
            TaskSpec(
                name=task.name,
                type=task.type,
                scoring=task.scoring,
                labels=labels,
                label_words=words,
                label_word_ids=ids if task.type == "classification" else [],
                pooling=task.pooling,
                max_new_tokens=task.max_new_tokens,
            )
        )
    return specs


def planned_batch(cfg: RunConfig, spec, placement: Placement, label_tokens: int | None) -> dict:
    """The CPU batch of the planned shape (data/collate.py), as the loader hands it to the step."""
    from ptune_dist.data.collate import collate
    from ptune_dist.data.encode import IGNORE, Example

    P, L = cfg.method.num_virtual_tokens, cfg.data.max_length
    T = L - placement.prefix_length(P)
    if T < 2:
        raise ConfigError(f"data.max_length={L} leaves {T} token(s) per row after the prefix")
    soft = list(range(1, placement.soft_slots(P) + 1))
    examples = []
    for _ in range(cfg.data.batch_size):
        ex = Example(input_ids=[1] * T, task_id=0, soft=soft)
        if spec.type == "classification":
            ex.labels, ex.answer_pos = 0, T - 1
        elif spec.type == "generation":
            n = min(label_tokens or max(1, L // 4), T - 1)
            ex.labels = [IGNORE] * (T - n) + [2] * n
        else:
            ex.labels = [IGNORE if i in soft else 0 for i in range(T)]
        examples.append(ex)
    return collate(examples, pad_id=0, padding_side=cfg.data.padding_side)


def _name_base(tracker, model) -> None:
    import torch

    from ptune_dist.model.quant import state_tensors

    for p in model.parameters():
        tracker.add(p, "weights")
    for b in model.buffers():
        tracker.add(b, "weights")
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        for t in state_tensors(state) if state is not None else ():
            tracker.add(t, "quant_state")
        scb = getattr(getattr(module, "state", None), "SCB", None)
        if scb is None:
            scb = getattr(getattr(module, "weight", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            tracker.add(scb, "quant_state")


def _hook_regions(tracker, model):
    """Forward: the base, then the head from the backbone's output on; backward: the head's until the
    backbone's output has its gradient, then the base's, and a checkpointed layer run again is recompute.
    Returns (undo callables, phase): the trace sets phase["backward"] around engine.backward."""
    phase = {"backward": False}
    undo = []

    def backbone_done(module, args, output):
        tracker.region = "head"
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        if hidden.requires_grad:
            hidden.register_hook(lambda grad: setattr(tracker, "region", "backward"))

    undo.append(model.backbone.register_forward_hook(backbone_done).remove)

    def recomputed(fn):
        def run(*args, **kwargs):
            if not phase["backward"]:
                return fn(*args, **kwargs)
            tracker.region = "recompute"
            try:  # the checkpoint's early stop ends a recomputation by raising through it
                return fn(*args, **kwargs)
            finally:
                tracker.region = "backward"

        return run

    for module in model.base.modules():
        ckpt = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and ckpt is not None:
            # the same checkpoint of the same function; only told when it runs again
            module._gradient_checkpointing_func = lambda fn, *a, _ckpt=ckpt, **k: _ckpt(recomputed(fn), *a, **k)
            undo.append(lambda m=module, c=ckpt: setattr(m, "_gradient_checkpointing_func", c))
    return undo, phase


def trace_here(cfg: RunConfig, hf_config=None, label_tokens: int | None = None, steps: int = 2) -> Trace:
    """trace_step in this process (fake_cuda.ready() must be true)."""
    import torch
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode

    from ptune_dist.data.host import describe
    from ptune_dist.methods import BaseInfo, method_class
    from ptune_dist.model.build import build_model
    from ptune_dist.rank_env import DistEnv
    from ptune_dist.train.loop import make_engine
    from ptune_dist.train.placement import Placement
    from ptune_dist.train.session import Session
    from ptune_dist.train.update import update

    from .fake_base import finish, skeleton
    from .live_bytes import LiveBytes

    check_traceable(cfg)
    t0, rss0 = time.perf_counter(), resident_bytes()
    device = torch.device(DEVICE)
    method = method_class(cfg.method.name)
    cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, init=RANDOM))
    config, kind = base_config(cfg, hf_config)
    info = BaseInfo.from_config(config, kind)
    specs = task_specs(cfg, info.vocab_size)
    # described on the host from its CPU tensors, as the loop's prefetch does (data/host.py); its pinning is left out
    batch = describe(planned_batch(cfg, specs[0], method.placement, label_tokens), [spec.type for spec in specs])
    base = skeleton(cfg.model, config, kind)  # on meta, outside the fake mode (bitsandbytes' parameters)
    notes = []
    fake, tracker = FakeTensorMode(allow_non_fake_inputs=True), LiveBytes(device)
    try:
        with fake, tracker:
            finish(base, cfg.model, device, trainable=method.trains_base)
        # build_model's prompts are made on the CPU from seeded generators, outside the fake mode: a module made
        # inside one cannot be moved (torch swaps a fake parameter, and fake tensors carry a weak reference)
        model = build_model(
            cfg.method,
            cfg.model,
            cfg.train.seed,
            specs,
            None,
            base=(base, info),
            device=torch.device("cpu"),
            method=method,
        )
        with fake, tracker:
            for module in (*model.prompts.values(), *model.heads.values()):  # build_model's last step, to `device`
                module.to(device)
            for name, b in list(model._buffers.items()):
                model._buffers[name] = b.to(device)
            model.device = device
            _name_base(tracker, model.base)
            for p in model.trainable_parameters().values():
                tracker.add(p, "prompt_optimizer")
                p.register_post_accumulate_grad_hook(lambda p: tracker.name(p.grad, "prompt_optimizer"))
            for b in list(model.prompts.buffers()) + list(model.heads.buffers()) + list(model._buffers.values()):
                tracker.add(b, "prompt_optimizer")
            session = Session(cfg, None, model, [], DistEnv(), Placement(device))
            engine = make_engine(session)
            loaded, load_peak = tracker.now(), tracker.peak
            tracker.reset_peak()
            handles, flags = _hook_regions(tracker, model)
            model.train()

            def phase(name: str) -> None:  # the update's phases name the memory it makes
                if name == "backward":
                    tracker.end_forward()
                flags["backward"] = name == "backward"
                tracker.region = {"backward": "head", "step": "optimizer"}.get(name, name)

            for _ in range(steps):
                update(engine, [batch], 1, device, move=_moved, phase=phase)  # the loop's own update
                for state in engine.optimizer.state.values():
                    for v in state.values():
                        tracker.name(v, "prompt_optimizer")
            for h in handles:
                h()
            attention = _attention_kernel(cfg, info, batch, device)
            if attention == "sdpa" and not torch.backends.cuda.is_built():
                notes.append(SDPA_NOTE)
    except (DataDependentOutputException, DynamicOutputShapeException) as e:
        raise NotTraceable(
            f"the step cannot be traced: {where(e)} needs a device tensor's value on the host ({type(e).__name__}: {e})"
        ) from None
    return Trace(
        peak=tracker.peak,
        parts=tracker.breakdown(),
        peak_region=tracker.peak_region,
        loaded=loaded,
        load_peak=load_peak,
        steps=steps,
        seconds=time.perf_counter() - t0,
        attention=attention,
        host_rss=max(0, resident_bytes() - rss0),
        notes=notes,
    )


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm; elsewhere its peak, ru_maxrss). Not the peak:
    a child of a large process inherits that parent's peak as its own."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _moved(batch: dict, device) -> dict:
    """device.to_device's copy without its pinning (host memory, not the device's; a fake tensor cannot be pinned)."""
    import torch

    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _attention_kernel(cfg: RunConfig, info, batch: dict, device) -> str:
    """The implementation kernels/dispatch.py resolves model.attention to for this batch's queries."""
    import torch

    from ptune_dist.kernels.dispatch import resolve_impl
    from ptune_dist.model.load import DTYPES

    B, T = batch["input_ids"].shape
    q = torch.empty(B, info.num_heads, T, info.head_dim, dtype=DTYPES[cfg.model.dtype], device=device)
    try:
        return resolve_impl(cfg.model.attention, q)
    except Exception as e:  # noqa: BLE001  (informational: the step itself ran)
        return f"{cfg.model.attention} ({type(e).__name__})"


def where(e: BaseException) -> str:
    """Where in ptune's own code (not the trace's) the exception happened, file:line (code), and the innermost
    frame outside torch when that is another library's (bitsandbytes, transformers)."""
    import torch

    root = Path(__file__).resolve().parents[2]
    torch_dir = Path(torch.__file__).resolve().parent
    frames = traceback.extract_tb(e.__traceback__)

    def show(f) -> str:
        path = Path(f.filename).resolve()
        name = path.relative_to(root) if path.is_relative_to(root) else Path(*path.parts[-3:])
        return f"{name}:{f.lineno} ({(f.line or '').strip()})"

    own = [f for f in frames if Path(f.filename).resolve().is_relative_to(root) and "/plan/" not in f.filename]
    outside = [f for f in frames if not Path(f.filename).resolve().is_relative_to(torch_dir)]
    text = show(own[-1]) if own else "an operation"
    if outside and (not own or outside[-1] is not own[-1]) and "/plan/" not in outside[-1].filename:
        text += f", in {show(outside[-1])}"
    return text


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


__all__ = ["Trace", "trace_step", "trace_steps", "trace_here", "NotTraceable", "CATEGORIES"]
