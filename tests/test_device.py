"""Where a rank runs, decided in one place (ptune_dist/device.py), tested without a GPU: which device
each setting and local rank gets, which process-group backend follows, how the base is placed, and the
errors a user sees. The same paths on a real GPU: tests/test_gpu.py (marker gpu)."""

import datetime

import pytest
import torch

from conftest import FIXTURES, MINI, session
from ptune_dist import device as dev
from ptune_dist.config import load_config
from ptune_dist.errors import ConfigError
from ptune_dist.model.load import device_map
from ptune_dist.rank_env import DistEnv
from ptune_dist.train import dist


class FakeCuda:
    """torch.cuda as device.choose sees it, with `count` GPUs; records set_device."""

    def __init__(self, count):
        self.count, self.current = count, None

    def is_available(self):
        return self.count > 0

    def device_count(self):
        return self.count

    def set_device(self, device):
        self.current = device


def test_cpu_is_chosen_without_asking_cuda():
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"train.device=cpu asked torch.cuda.{name}")

    assert dev.choose("cpu", 3, cuda=Untouchable()) == torch.device("cpu")


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_clearly():
    assert dev.choose("auto", 0, cuda=FakeCuda(0)) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"train.device=cuda, but no CUDA GPU is visible.*train.device=auto or cpu"):
        dev.choose("cuda", 0, cuda=FakeCuda(0))
    with pytest.raises(
        ConfigError, match=r"train.device='gpu' is not allowed; choose one of \['auto', 'cpu', 'cuda'\]"
    ):
        dev.choose("gpu", 0, cuda=FakeCuda(1))


@pytest.mark.parametrize("setting", ["auto", "cuda"])
def test_each_rank_takes_its_own_gpu_and_makes_it_current(setting):
    cuda = FakeCuda(8)
    assert dev.choose(setting, 5, cuda=cuda, environ={}) == torch.device("cuda", 5)
    assert cuda.current == torch.device("cuda", 5)


def test_a_task_bound_to_one_gpu_uses_it_and_too_many_ranks_are_refused():
    # srun --gpus-per-task=1: local rank 3 sees one GPU, its own
    assert dev.choose("cuda", 3, cuda=FakeCuda(1), environ={"CUDA_VISIBLE_DEVICES": "3"}) == torch.device("cuda", 0)
    # 3 ranks on a 2-GPU node: the third has no GPU of its own (NCCL refuses two ranks on one GPU)
    with pytest.raises(
        ConfigError, match=r"local rank 2 needs a GPU of its own.*sees 2 GPU\(s\).*launch.nproc_per_node"
    ):
        dev.choose("auto", 2, cuda=FakeCuda(2), environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=unset"):
        dev.choose("auto", 1, cuda=FakeCuda(1), environ={})


def test_backend_follows_the_device():
    assert dev.backend(torch.device("cpu")) == "gloo"
    assert dev.backend(torch.device("cuda", 1)) == "cuda:nccl,cpu:gloo"  # objects and barriers stay on gloo


def test_process_group_of_a_gpu_rank_is_nccl_bound_to_its_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(dist.tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.tdist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    env = DistEnv(rank=1, world=2, local_rank=1, master_addr="10.1.2.3", master_port=29411)
    dist.init(env, "torch", 60, torch.device("cuda", 1))
    backend, kw = calls[0]
    assert backend == "cuda:nccl,cpu:gloo" and kw["device_id"] == torch.device("cuda", 1)
    assert (kw["init_method"], kw["rank"], kw["world_size"]) == ("tcp://10.1.2.3:29411", 1, 2)
    assert kw["timeout"] == datetime.timedelta(seconds=60)
    dist.init(env, "torch", 60, torch.device("cpu"))
    assert calls[1][0] == "gloo" and "device_id" not in calls[1][1]


def test_the_base_loads_straight_onto_the_gpu_except_under_zero3():
    assert device_map(None) is None and device_map(torch.device("cpu")) is None
    assert device_map(torch.device("cuda", 2)) == {"": torch.device("cuda", 2)}
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    assert device_map(torch.device("cuda", 0)) is None  # DeepSpeed places the partitions
    del keep


def test_cpu_batches_stay_as_they_are():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "skip": True}
    assert dev.to_device(batch, torch.device("cpu")) is batch
    assert dev.describe(torch.device("cpu")) == {"device": "cpu", "backend": "gloo"}
    assert dev.peak_bytes(torch.device("cpu")) is None


def test_config_key_lists_its_choices():
    assert load_config([], ["train.device=cuda"]).train.device == "cuda"
    with pytest.raises(
        ConfigError, match=r"train.device='tpu' is not allowed; choose one of \['auto', 'cpu', 'cuda'\]"
    ):
        load_config([], ["train.device=tpu"])


def test_a_session_puts_prompts_heads_and_label_tables_on_its_device(mini):
    s = session(
        [
            f"model.name_or_path={MINI}",
            "method.name=p_tuning_v2",
            "tasks.0.preset=rte",
            f"tasks.0.train={FIXTURES / 'superglue' / 'rte.jsonl'}",
            "tasks.0.scoring=head",
            "data.batch_size=2",
        ],
        base=mini,
        splits=("train",),
    )
    assert s.device == torch.device("cpu") and s.model.device == torch.device("cpu")
    assert {p.device.type for p in s.model.trainable_parameters().values()} == {"cpu"}
    assert all(p.dtype == torch.float32 for p in s.model.trainable_parameters().values())  # fp32 master weights


def test_a_base_on_another_device_than_the_rank_is_refused(mini):
    meta = (torch.nn.Module(), mini[1])
    meta[0].device = torch.device("meta")
    with pytest.raises(ConfigError, match=r"train.device=auto chose cpu, but the base handed in is on meta"):
        session([f"model.name_or_path={MINI}"], base=meta)


# -- the device is decided once: nothing outside device.py asks torch.cuda where to run ----------------
ROOT = FIXTURES.parents[1]
PROBES = {"is_available", "device_count", "get_device_properties"}
# the files that may still call them, each with its reason; every entry must still be needed
ALLOWED = {
    "ptune_dist/device.py": "decides the device and answers every other question about this machine's GPUs",
    "ptune_dist/train/rng.py": "whether this process has initialised CUDA, so its RNG state is saved "
    "(not where to run)",
    "ptune_dist/checkpoint/state.py": "the same question when a checkpoint reads the CUDA RNG state",
}
# not listed: kernels/available.py checks a call's own tensors (q.device), plan/fake_cuda.py and plan/trace.py
# fake CUDA on purpose and name torch.cuda only in their text


def cuda_probes(path):
    """(line, call) of every `<...>cuda.is_available / device_count / get_device_properties` in the file's code."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    return [
        (n.lineno, f"{ast.unparse(n.value)}.{n.attr}")
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr in PROBES and ast.unparse(n.value).split(".")[-1] == "cuda"
    ]


def test_nothing_outside_device_py_asks_torch_cuda_about_the_machine():
    found = {}
    for part in ("ptune_dist", "kernels", "launcher", "slurm"):
        for path in sorted((ROOT / part).rglob("*.py")):
            calls = cuda_probes(path)
            if calls:
                found[path.relative_to(ROOT).as_posix()] = calls
    stray = {f: c for f, c in found.items() if f not in ALLOWED}
    assert not stray, f"ask ptune_dist/device.py (on_gpu, gpu_count, gpu_memories) instead: {stray}"
    assert set(ALLOWED) <= set(found), f"allowed but no longer calling torch.cuda: {set(ALLOWED) - set(found)}"


def test_the_probe_finds_a_call():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "x.py"
        f.write_text('"""torch.cuda.is_available() in text"""\nimport torch\nn = torch.cuda.device_count()\n')
        assert cuda_probes(f) == [(3, "torch.cuda.device_count")]


@pytest.mark.parametrize("setting, refused", [("cpu", True), ("auto", False), ("cuda", False)])
def test_a_float16_quantised_base_follows_train_device_not_the_machine(monkeypatch, setting, refused):
    """On a GPU machine, train.device=cpu runs bitsandbytes' CPU kernels, which take no float16: refused before
    anything loads (quant_rules asks device.on_gpu with train.device)."""
    monkeypatch.setattr(dev, "gpu_count", lambda cuda=None: 1)  # this machine 'shows' one GPU
    overrides = ["model.quant=nf4", "model.quant_compute_dtype=float16", f"train.device={setting}"]
    if refused:
        with pytest.raises(
            ConfigError,
            match=r"model.quant_compute_dtype=float16 with model.quant=nf4 and "
            r"train.device=cpu: bitsandbytes' CPU kernels",
        ):
            load_config([], overrides)
    else:
        assert load_config([], overrides).model.quant_compute_dtype == "float16"


def test_the_planner_takes_this_machines_gpu_from_device_py(monkeypatch):
    from ptune_dist.plan import request

    monkeypatch.setattr(dev, "gpu_count", lambda cuda=None: 0)
    assert request.local_gpu() is None and not dev.on_gpu("auto")
    monkeypatch.setattr(request, "gpu_memories", lambda: [(80 * 2**30, "H100"), (24 * 2**30, "L4")])
    assert request.local_gpu() == (24.0 * 2**30, "L4")  # the smallest
