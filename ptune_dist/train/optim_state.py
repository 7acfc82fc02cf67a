"""A torch optimizer's state keyed by parameter name instead of by position, and back.

    {"state": {name: {slot: tensor or number}},             e.g. exp_avg, exp_avg_sq, step
     "param_groups": [{hyper-parameters..., "params": [names]}]}

torch numbers a parameter by its place in the optimizer's groups, which says nothing once the model or
the engine underneath changes; a name does, so an engine hands this form out (engine.py, ds_engine.py)
and a checkpoint stores it. `names` lists the trainable parameters in the order the optimizer got them
(the model's trainable_parameters()).
"""

from __future__ import annotations

import torch

from ptune_dist.errors import CheckpointError


def named_state_dict(optimizer: torch.optim.Optimizer, names: list[str]) -> dict:
    """optimizer.state_dict() with its parameters named (tensors detached, contiguous, on the CPU)."""
    sd = optimizer.state_dict()
    order = [i for group in sd["param_groups"] for i in group["params"]]
    if len(order) != len(names):
        raise CheckpointError(f"the optimizer holds {len(order)} parameters, the model trains {len(names)}")
    name_of = dict(zip(order, names))
    state = {}
    for idx, name in name_of.items():
        slots = sd["state"].get(idx, {})
        if slots:
            state[name] = {
                slot: v.detach().contiguous().cpu() if torch.is_tensor(v) else v for slot, v in slots.items()
            }
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [name_of[i] for i in g["params"]]}
        for g in sd["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def load_named_state_dict(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load what named_state_dict made: the parameters are numbered in the order the saved groups name them
    (the checkpoint has checked that these are the optimizer's, in its order)."""
    groups, index = [], {}
    for g in sd["param_groups"]:
        ids = list(range(len(index), len(index) + len(g["params"])))
        index.update(zip(g["params"], ids))
        groups.append({**g, "params": ids})
    state = {index[name]: dict(slots) for name, slots in sd["state"].items() if slots and name in index}
    optimizer.load_state_dict({"state": state, "param_groups": groups})
