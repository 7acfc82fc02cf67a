"""The DeepSpeed engine: ZeRO stages 0-3, optimizer offload (stages 2-3), parameter offload (stage 3).

Same calls as TorchEngine (engine.py). The loop hands every micro-batch's loss to backward();
DeepSpeed sums the micro-batches' gradients (scale_wrt_gas=False: the losses come scaled by
train/loss_weights.py, the one place they are normalised) and takes the update on the last micro-batch,
which step() triggers.

Same state contract too: state_dict() -> {"weights", "optimizer", "scheduler"}, whole tensors keyed by
parameter name (engine.py), and load_state_dict() of that, never DeepSpeed's own checkpoint format.
Above stage 0 the full fp32 weights and per-parameter optimizer state are gathered from the ZeRO
partitions (deepspeed.utils.safe_get_full_*, a collective every rank calls) and scattered back into
them on load, so a run saved on 2 ranks resumes on 1 or 4, or with the plain engine, and exports to PEFT.
"""

from __future__ import annotations

import torch
import yaml

from ptune_dist.config.schema import DistributedConfig, TrainConfig

from .optim_state import load_named_state_dict, named_state_dict


def ds_config(d: DistributedConfig, t: TrainConfig, batch_size: int, world: int) -> dict:
    """The DeepSpeed config of a run (`batch_size`: data.batch_size, per rank). fp32 as far as DeepSpeed
    knows: the base keeps the dtype it was loaded in, the trainable weights are fp32 (so DeepSpeed keeps
    no second master copy)."""
    # values typed on the command line arrive as text: read them as YAML scalars (numbers, booleans)
    zero = {
        "stage": d.zero_stage,
        **{k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in d.zero_extra.items()},
    }
    if d.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if d.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": batch_size * t.grad_accum * world,
        # stage 0: DeepSpeed's clipping copies the limit to the device every step (a host sync); ours clips there
        "gradient_clipping": t.max_grad_norm if d.zero_stage else 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # our torch optimizer also when offloading (no op build)
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _shape(p) -> tuple:
    return tuple(getattr(p, "ds_shape", p.shape))  # a ZeRO-3 parameter's local tensor is only its partition


class DeepSpeedEngine:
    def __init__(self, model, optimizer, scheduler_fn, config: dict, max_grad_norm: float = 0.0):
        """`config`: ds_config(...) of the run; `max_grad_norm`: train.max_grad_norm (stage 0 clips here)."""
        import deepspeed

        self.model, self.stage, self.max_grad_norm = model, config["zero_optimization"]["stage"], max_grad_norm
        self.params = model.trainable_parameters()
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler_fn,
            config=config,
            model_parameters=list(self.params.values()),
        )

    def forward(self, batch):
        return self.ds(batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)  # summed over micro-batches, as TorchEngine (loss_weights.py)
        if not self.ds.is_gradient_accumulation_boundary():
            self.ds.step()  # a micro-step: DeepSpeed counts it and updates nothing

    def step(self, loss: torch.Tensor | None = None) -> torch.Tensor:
        """The update; returns the gradient norm before clipping (DeepSpeed's, or at stage 0, where this engine
        clips, its own over the already averaged gradients) as a 0-dim tensor, NaN when this
        rank's loss was not finite (nonfinite.py sums that flag over the ranks when it reads the norms). DeepSpeed
        has applied that update by then: the run must stop (train.on_nonfinite=stop, the only policy config/load.py
        allows with DeepSpeed), which it does at the next read, before any save."""
        own = None
        if self.stage == 0:  # the gradients are averaged over the ranks by now; clipped here, on the device
            grads = [p for p in self.params.values() if p.grad is not None]
            if grads:
                own = torch.nn.utils.clip_grad_norm_(
                    grads, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
                )
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        norm = own if norm is None else norm
        device = next(iter(self.params.values())).device
        if not torch.is_tensor(norm):  # a number (or None): made on the device by a fill, not a copy
            norm = torch.full((), float("nan") if norm is None else float(norm), device=device)
        if loss is not None:
            norm = torch.where(torch.isfinite(loss.detach().float()), norm.float().to(device), float("nan"))
        return norm.reshape(())

    @property
    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    def shapes(self) -> dict:
        return {n: _shape(p) for n, p in self.params.items()}

    @property
    def _base(self):
        """The torch optimizer that holds the state (of ZeRO's flat partitions when stage >= 1)."""
        return self.optimizer if self.stage == 0 else self.optimizer.optimizer

    def full_weights(self) -> dict:
        """{name: full fp32 tensor on the CPU}; a collective under ZeRO-3."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.params.items():
            full = safe_get_full_fp32_param(p) if self.stage else None  # a collective under ZeRO-3
            out[name] = (p.detach() if full is None else full).float().reshape(_shape(p)).contiguous().cpu()
        return out

    def state_dict(self) -> dict:
        return {
            "weights": self.full_weights(),
            "optimizer": self._optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
        }

    def _optimizer_state(self) -> dict:
        """The optimizer's state keyed by parameter name (optim_state.py); above stage 0 each tensor slot
        gathered whole from ZeRO's flat partitions, and the step count as a float32 tensor per parameter."""
        if self.stage == 0:
            return named_state_dict(self.optimizer, list(self.params))
        from deepspeed.utils import safe_get_full_optimizer_state

        first = next(iter(self._base.state.values()))
        slots = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
        step = first["step"]
        state = {}
        for name, p in self.params.items():
            state[name] = {
                slot: safe_get_full_optimizer_state(p, slot).float().reshape(_shape(p)).contiguous().cpu()
                for slot in slots
            }
            state[name]["step"] = torch.as_tensor(step, dtype=torch.float32).clone()
        group = {k: v for k, v in self._base.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(self.params)}]}

    def load_state_dict(self, sd: dict) -> None:
        weights, optimizer = sd["weights"], sd["optimizer"]
        if self.stage == 0:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(weights[name])
            load_named_state_dict(self.optimizer, optimizer)
        else:
            self._load_partitioned(weights, optimizer)
        self.scheduler.load_state_dict(sd["scheduler"])

    def _load_partitioned(self, weights: dict, optimizer: dict) -> None:
        """Scatter whole weights and optimizer slots into ZeRO's partitions (stages 1-3)."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        self._materialize_state()
        by_param = optimizer["state"]
        for name, p in self.params.items():
            safe_set_full_fp32_param(p, weights[name])
            for slot, value in by_param.get(name, {}).items():
                if torch.is_tensor(value) and value.dim() > 0:
                    safe_set_full_optimizer_state(p, value, slot)
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0, enabled=self.stage == 3):
                with torch.no_grad():
                    p.data.copy_(weights[name].reshape(p.data.shape))  # the working copy the forward uses
        step = next(iter(by_param.values()))["step"]
        for st in self._base.state.values():
            st["step"] = torch.as_tensor(step).clone() if torch.is_tensor(st["step"]) else float(step)
        saved_group = optimizer["param_groups"][0]
        for g in self._base.param_groups:  # the scheduled lr of the saved step (schedulers only set it on step)
            g.update({k: saved_group[k] for k in ("lr", "initial_lr") if k in saved_group})

    def _materialize_state(self) -> None:
        """torch creates optimizer state at the first step. Before resuming, take one step with zero
        gradients and lr 0 on the flat fp32 partitions ZeRO hands the optimizer, then (stages 1-2) let
        ZeRO link its per-parameter views of that state. Relies on DeepSpeed 0.19's ZeRO internals
        (pinned in constraints.txt; tests/test_deepspeed.py resumes every stage)."""
        zo, base = self.optimizer, self._base
        if self.stage == 3:
            flat = list(zo.fp32_partitioned_groups_flat)
            group_of = [zo.sub_group_to_group_id[i] for i in range(len(flat))]
        else:
            flat = list(zo.single_partition_of_fp32_groups)
            group_of = list(range(len(flat)))
        if all(base.state.get(fp) for fp in flat):
            return
        params, lrs, grads = (
            [g["params"] for g in base.param_groups],
            [g["lr"] for g in base.param_groups],
            [fp.grad for fp in flat],
        )
        for g in base.param_groups:
            g["params"], g["lr"] = [], 0.0
        for fp, gid in zip(flat, group_of):
            base.param_groups[gid]["params"].append(fp)
            fp.grad = torch.zeros_like(fp)
        base.step()
        for g, ps, lr in zip(base.param_groups, params, lrs):
            g["params"], g["lr"] = ps, lr
        for fp, grad in zip(flat, grads):
            fp.grad = grad
        if self.stage < 3:
            zo._lazy_init_hp_params_optimizer_state()
