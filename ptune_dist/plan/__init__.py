"""The memory planner behind `ptune plan`: per-device peak memory of a training setup, predicted from
the model's config and the run's config (see memory.py for the terms, docs/plan.md for the check
against measurements)."""

from .arch import BUILTIN, Arch, builtin_names, from_hf_config, resolve_arch
from .memory import Breakdown, Setup, predict, trainable_params
from .search import parse_request, parse_size, plan, render, run

__all__ = ["Arch", "BUILTIN", "builtin_names", "from_hf_config", "resolve_arch", "Breakdown", "Setup", "predict",
           "trainable_params", "parse_request", "parse_size", "plan", "render", "run"]
