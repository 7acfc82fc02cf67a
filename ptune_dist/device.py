"""The device of this rank, chosen once, and what follows from it (see docs/device.md).

    choose(setting, local_rank)  -> torch.device   train.device: auto | cpu | cuda; binds the GPU
    on_gpu(setting)              -> whether train.device=setting runs on a GPU on this machine (asked
                                    before any rank starts: config checks, the planner); binds nothing
    gpu_count(), gpu_memories()  -> the GPUs this machine shows: how many; (total bytes, name) of each
    backend(device)              -> the process-group backend: gloo, or NCCL for GPU tensors with
                                    gloo beside it for the CPU-side collectives (objects, barriers)
    tensor_backend(device)       -> the one backend that moves this device's tensors: nccl or gloo
    pin(batch, device)           -> the batch's tensors in pinned host memory when the device is a GPU
    to_device(batch, device)     -> the batch on the device (from pinned host memory, a non-blocking copy)
    describe(device)             -> what the metrics log says about the device
    peak_bytes(device)           -> the allocator's peak on a GPU (None on the CPU)

Everything else receives the device as an argument, or asks on_gpu / gpu_count / gpu_memories here; nothing
else asks torch.cuda where to run or what GPUs there are (tests/test_device.py greps the source for it).
"""

from __future__ import annotations

import os

import torch

from ptune_dist.errors import ConfigError

SETTINGS = ("auto", "cpu", "cuda")


def gpu_count(cuda=torch.cuda) -> int:
    return cuda.device_count() if cuda.is_available() else 0


def on_gpu(setting: str) -> bool:
    """Whether train.device=setting runs on a GPU here: never for cpu; for auto and cuda when this machine shows
    one (train.device=cuda without one is refused by choose)."""
    return setting != "cpu" and gpu_count() > 0


def gpu_memories(cuda=torch.cuda) -> list[tuple[int, str]]:
    """(total memory in bytes, name) of each GPU this machine shows; [] without one."""
    return [(p.total_memory, p.name) for p in (cuda.get_device_properties(i) for i in range(gpu_count(cuda)))]


def gpu_index(local_rank: int, count: int, environ=os.environ) -> int:
    """The GPU of the rank with this local rank: its own of the node's GPUs, or the one GPU a launcher
    bound to the task (srun --gpus-per-task=1 leaves one device in CUDA_VISIBLE_DEVICES)."""
    if local_rank < count:
        return local_rank
    visible = environ.get("CUDA_VISIBLE_DEVICES", "")
    if count == 1 and visible and "," not in visible:
        return 0
    raise ConfigError(
        f"train.device: the rank with local rank {local_rank} needs a GPU of its own, but this "
        f"process sees {count} GPU(s) (CUDA_VISIBLE_DEVICES={visible or 'unset'}); start at most "
        f"{count} ranks per node (launch.nproc_per_node) or set train.device=cpu"
    )


def choose(setting: str, local_rank: int = 0, cuda=torch.cuda, environ=os.environ) -> torch.device:
    """This rank's device; on a GPU also makes it the current CUDA device (before any process group,
    so NCCL and every later allocation use it)."""
    if setting not in SETTINGS:
        raise ConfigError(f"train.device={setting!r} is not allowed; choose one of {list(SETTINGS)}")
    if setting == "cpu":
        return torch.device("cpu")
    count = gpu_count(cuda)
    if count == 0:
        if setting == "cuda":
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(
                f"train.device=cuda, but no CUDA GPU is visible (torch {torch.__version__}, {build}); "
                "use train.device=auto or cpu"
            )
        return torch.device("cpu")
    device = torch.device("cuda", gpu_index(local_rank, count, environ))
    cuda.set_device(device)
    return device


def tensor_backend(device: torch.device) -> str:
    """The backend that moves this device's tensors (DeepSpeed's dist_backend): NCCL for a GPU, else gloo."""
    return "nccl" if device.type == "cuda" else "gloo"


def backend(device: torch.device) -> str:
    """NCCL moves the GPU tensors; gloo beside it keeps object collectives and barriers on the CPU."""
    tensors = tensor_backend(device)
    return f"cuda:{tensors},cpu:gloo" if tensors == "nccl" else tensors


def pin(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors in pinned (page-locked) host memory when `device` is a GPU, so that their copy
    to it need not wait (the training loop pins the next batches in a background thread: train/prefetch.py);
    the batch as it is otherwise. Non-tensors stay as they are."""
    if device.type == "cpu":
        return batch
    return {k: v.pin_memory() if torch.is_tensor(v) and not v.is_pinned() else v for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device`: copied from pinned host memory without blocking the host, so the copy
    overlaps the work already queued on the GPU (a tensor not pinned yet is pinned first, here). Non-tensors
    stay as they are."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in pin(batch, device).items()}


def describe(device: torch.device) -> dict:
    out = {"device": str(device), "backend": backend(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(
            name=props.name,
            memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            torch_cuda=torch.version.cuda,
        )
    return out


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
