"""Unit tests of the Checkpointer (ptune_dist/checkpoint/checkpointer.py): its own logic over small stand-in
parts (a fake engine with two tensors, one of them dotted, and a name-keyed optimizer state with a tensor
and a non-tensor scalar slot; a fake loader; the real RankRng on one process), no model loaded.

Covered:
  - save then load into fresh parts restores every part's state exactly, and load returns the Training
    with the step and the `extra` keys (a baseline) in its state
  - the on-disk layout: trainable/optimizer/rng safetensors and their keys, state.json keys, config.yaml
    as given, manifest.json listing every file
  - prune keeps the newest `keep` complete checkpoints (an incomplete folder is neither counted nor removed)
  - a non-main rank writes nothing, yet gathers its parts' state and waits at the barrier
  - a checkpoint for another model (shapes or names differ) is a CheckpointError with no part touched;
    a complete folder whose state.json lacks "loader" is CheckpointDamaged with no part touched, and the
    same edit without a matching manifest is a CheckpointError (incomplete), not CheckpointDamaged; a part
    refusing its state is a CheckpointError
  - non-finite weights are refused at save time and the previous checkpoint stays as it was
  - RNG: torch's and Python's generators continue after load exactly as after the save; a rank the saving
    run did not have gets a fresh stream reproducible from the step (same on two loads, not rank 0's,
    another step's differs)
  - the real TorchEngine (tiny module, AdamW, LambdaLR, one real step): weights, optimizer moments and the
    lr schedule come back exactly, and the next step matches the uninterrupted run's
"""

import copy
import hashlib
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from ptune_dist.checkpoint.atomic import is_valid
from ptune_dist.checkpoint.checkpointer import Checkpointer
from ptune_dist.checkpoint.read import CheckpointDamaged
from ptune_dist.errors import CheckpointError
from ptune_dist.train.engine import TorchEngine
from ptune_dist.train.rng import RankRng

CONFIG = "model:\n  name_or_path: tiny\ntrain:\n  keep_checkpoints: 2\n"
EXTRA = {"baseline": {"accuracy": 0.25, "loss": 1.5}}


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """These tests seed and restore the global generators: leave them as they were for other tests."""
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    yield
    torch.set_rng_state(torch_state)
    random.setstate(py_state)


class FakeEngine:
    """An engine's state as the checkpointer sees it; `loaded` records what load_state_dict got."""

    def __init__(self, shapes=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        shapes = shapes or {"prompt": (2, 3), "head.weight": (4,)}
        self.weights = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
        names = list(self.weights)
        self.optimizer = {
            "state": {n: {"exp_avg": torch.randn(w.shape, generator=g), "step": 3} for n, w in self.weights.items()},
            "param_groups": [{"lr": 0.01, "betas": [0.9, 0.999], "weight_decay": 0.0, "params": names}],
        }
        self.scheduler = {"last_epoch": 3, "base_lrs": [0.01], "_last_lr": [0.0075]}
        self.loaded = None
        self.state_dict_calls = 0

    def shapes(self):
        return {n: tuple(w.shape) for n, w in self.weights.items()}

    def state_dict(self):
        self.state_dict_calls += 1
        return {
            "weights": dict(self.weights),
            "optimizer": copy.deepcopy(self.optimizer),
            "scheduler": dict(self.scheduler),
        }

    def load_state_dict(self, sd):
        self.loaded = sd


class FakeLoader:
    def __init__(self, state=None):
        self.state = state if state is not None else {"epoch": 1, "position": 7, "order": [2, 0, 1]}
        self.loaded = None

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, sd):
        self.loaded = sd


class SpyRng(RankRng):
    """The real RankRng, counting its loads."""

    def __init__(self, rank=0):
        super().__init__(rank)
        self.loads = 0

    def load_state_dict(self, sd):
        self.loads += 1
        super().load_state_dict(sd)


class Barrier:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


def checkpointer(root, engine=None, loader=None, rng=None, *, keep=3, is_main=True, barrier=None):
    return Checkpointer(
        root,
        engine=engine or FakeEngine(),
        loader=loader or FakeLoader(),
        rng=rng or SpyRng(0),
        config_yaml=CONFIG,
        keep=keep,
        is_main=is_main,
        barrier=barrier or (lambda: None),
    )


def rewrite_manifest(folder, name):
    """Make the manifest agree with `name` as it is now (a complete folder written by something else)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def assert_untouched(ck):
    assert ck.engine.loaded is None and ck.loader.loaded is None and ck.rng.loads == 0


def test_save_then_load_restores_every_part_exactly(tmp_path):
    src = checkpointer(tmp_path)
    torch.manual_seed(11)
    random.seed(11)
    cpu_state, py_state = torch.get_rng_state(), random.getstate()
    folder = src.save(7, EXTRA)
    dst = checkpointer(tmp_path, engine=FakeEngine(seed=1), loader=FakeLoader({}))
    saved = dst.load(folder)

    assert saved.folder == folder and saved.step == 7 and saved.state["baseline"] == EXTRA["baseline"]
    got, want = dst.engine.loaded, src.engine
    assert set(got["weights"]) == set(want.weights)
    assert all(torch.equal(got["weights"][n], w) for n, w in want.weights.items())
    assert set(got["optimizer"]["state"]) == set(want.optimizer["state"])
    for name, slots in want.optimizer["state"].items():
        assert torch.equal(got["optimizer"]["state"][name]["exp_avg"], slots["exp_avg"])
        assert got["optimizer"]["state"][name]["step"] == 3 and type(got["optimizer"]["state"][name]["step"]) is int
    assert got["optimizer"]["param_groups"] == want.optimizer["param_groups"]
    assert got["scheduler"] == want.scheduler
    assert dst.loader.loaded == src.loader.state
    assert dst.rng.loads == 1
    assert torch.equal(torch.get_rng_state(), cpu_state) and random.getstate() == py_state


def test_layout_on_disk(tmp_path):
    folder = checkpointer(tmp_path).save(5, EXTRA)
    files = {"trainable.safetensors", "optimizer.safetensors", "state.json", "rng.safetensors", "config.yaml"}
    assert folder == tmp_path / "step-5"
    assert {p.name for p in folder.iterdir()} == files | {"manifest.json"}
    assert set(json.loads((folder / "manifest.json").read_text())["files"]) == files
    assert set(load_file(folder / "trainable.safetensors")) == {"prompt", "head.weight"}
    assert set(load_file(folder / "optimizer.safetensors")) == {"state.prompt.exp_avg", "state.head.weight.exp_avg"}
    state = json.loads((folder / "state.json").read_text())
    assert set(state) == {"step", "optimizer", "scheduler", "loader", "python_rng", "baseline"}
    assert state["step"] == 5 and state["baseline"] == EXTRA["baseline"]
    assert state["optimizer"]["scalars"] == {"prompt": {"step": 3}, "head.weight": {"step": 3}}
    assert state["optimizer"]["param_groups"][0]["params"] == ["prompt", "head.weight"]
    assert state["loader"] == FakeLoader().state and len(state["python_rng"]) == 1
    assert set(load_file(folder / "rng.safetensors")) - {"rank0.cuda"} == {"rank0"}
    assert (folder / "config.yaml").read_text() == CONFIG


def test_prune_keeps_newest_complete_checkpoints(tmp_path):
    (tmp_path / "step-0").mkdir()  # incomplete (no manifest): neither counted nor removed
    ck = checkpointer(tmp_path, keep=2)
    for step in (10, 20, 30):
        ck.save(step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0", "step-20", "step-30"]
    assert is_valid(tmp_path / "step-20") and is_valid(tmp_path / "step-30")


def test_non_main_rank_writes_nothing_but_waits_at_barrier(tmp_path):
    barrier = Barrier()
    root = tmp_path / "checkpoints"
    ck = checkpointer(root, is_main=False, barrier=barrier)
    assert ck.save(3) == root / "step-3"
    assert ck.save(4) == root / "step-4"
    assert barrier.calls == 2 and ck.engine.state_dict_calls == 2  # the parts still gather on every rank
    assert not root.exists()


def test_main_rank_calls_barrier_once_per_save(tmp_path):
    barrier = Barrier()
    checkpointer(tmp_path, barrier=barrier).save(1)
    assert barrier.calls == 1


@pytest.mark.parametrize(
    "shapes",
    [
        {"prompt": (2, 4), "head.weight": (4,)},  # a shape differs
        {"prompt": (2, 3), "other.weight": (4,)},
    ],
)  # a name differs
def test_load_of_another_models_checkpoint_is_error_with_no_part_touched(tmp_path, shapes):
    folder = checkpointer(tmp_path).save(2)
    ck = checkpointer(tmp_path, engine=FakeEngine(shapes))
    with pytest.raises(CheckpointError) as e:
        ck.load(folder)
    assert not isinstance(e.value, CheckpointDamaged)
    assert_untouched(ck)


def saved_without_loader_state(tmp_path):
    """A checkpoint whose state.json has lost its "loader" key (the manifest not updated)."""
    folder = checkpointer(tmp_path).save(2)
    state = json.loads((folder / "state.json").read_text())
    del state["loader"]
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def test_complete_folder_without_loader_state_is_damaged_with_no_part_touched(tmp_path):
    folder = saved_without_loader_state(tmp_path)
    rewrite_manifest(folder, "state.json")  # its manifest holds: complete, but no ptune checkpoint
    ck = checkpointer(tmp_path)
    with pytest.raises(CheckpointDamaged, match="loader"):
        ck.load(folder)
    assert_untouched(ck)


def test_edited_state_json_without_manifest_is_incomplete_not_damaged(tmp_path):
    folder = saved_without_loader_state(tmp_path)
    ck = checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="manifest") as e:
        ck.load(folder)
    assert not isinstance(e.value, CheckpointDamaged)
    assert_untouched(ck)


def test_part_refusing_its_state_is_checkpoint_error(tmp_path):
    folder = checkpointer(tmp_path).save(2)

    class Refusing(FakeLoader):
        def load_state_dict(self, sd):
            raise KeyError("position")

    with pytest.raises(CheckpointError, match="position"):
        checkpointer(tmp_path, loader=Refusing()).load(folder)


def test_nonfinite_weights_refused_at_save_and_previous_checkpoint_stays(tmp_path):
    ck = checkpointer(tmp_path)
    folder = ck.save(1)
    before = (folder / "trainable.safetensors").read_bytes()
    ck.engine.weights["prompt"] = ck.engine.weights["prompt"].clone()
    ck.engine.weights["prompt"][0, 0] = float("nan")
    for step in (1, 2):  # over the same folder, and as a new one
        with pytest.raises(CheckpointError, match="NaN"):
            ck.save(step)
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]  # no step-2, no temporary folder left
    assert is_valid(folder) and (folder / "trainable.safetensors").read_bytes() == before


def draws():
    return torch.rand(4).tolist(), [random.random() for _ in range(4)]


def test_rng_continues_after_load_as_after_save(tmp_path):
    torch.manual_seed(123)
    random.seed(123)
    ck = checkpointer(tmp_path)
    folder = ck.save(4)
    after_save = draws()
    torch.manual_seed(999)
    random.seed(999)
    ck.load(folder)
    assert draws() == after_save


def test_rank_missing_from_checkpoint_gets_stream_seeded_from_step(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    ck = checkpointer(tmp_path)
    folder, other = ck.save(4), ck.save(6)  # saved by one rank: only rank0's state
    rank1 = checkpointer(tmp_path, rng=SpyRng(rank=1))

    rank1.load(folder)
    first = draws()
    torch.manual_seed(77)
    random.seed(77)
    rank1.load(folder)
    assert draws() == first
    ck.load(folder)
    assert draws() != first  # rank 0 resumes its own saved stream
    rank1.load(other)
    assert draws() != first  # the stream follows the step


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.prompt = torch.nn.Parameter(torch.randn(2, 3))
        self.head = torch.nn.Linear(3, 1)
        self.frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)

    def trainable_parameters(self):
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def forward(self, x):
        return (self.head(torch.tanh(x @ self.prompt + self.frozen)) ** 2).mean()


def torch_engine(seed):
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=0.1, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return TorchEngine(model, opt, sched, max_grad_norm=1.0)


def take_step(engine, x):
    loss = engine.forward(x)
    engine.backward(loss)
    engine.step(loss)


def test_torch_engine_round_trip_restores_weights_moments_and_schedule(tmp_path):
    x = torch.randn(5, 2)
    src = torch_engine(0)
    take_step(src, x)
    folder = checkpointer(tmp_path, engine=src).save(1)
    dst = torch_engine(1)
    dst.model.frozen.data.copy_(src.model.frozen)  # not trainable: not the checkpoint's to restore
    checkpointer(tmp_path, engine=dst).load(folder)

    for (name, a), b in zip(src.model.trainable_parameters().items(), dst.model.trainable_parameters().values()):
        assert torch.equal(a, b), name
        sa, sb = src.optimizer.state[a], dst.optimizer.state[b]
        assert set(sa) == set(sb) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert dst.scheduler.state_dict() == src.scheduler.state_dict() and dst.lr == src.lr
    assert json.loads(json.dumps(dst.optimizer.state_dict()["param_groups"])) == json.loads(
        json.dumps(src.optimizer.state_dict()["param_groups"])
    )

    take_step(src, x)  # the resumed run continues exactly as the uninterrupted one
    take_step(dst, x)
    assert all(torch.equal(a, b) for a, b in zip(src.params, dst.params)) and dst.lr == src.lr
