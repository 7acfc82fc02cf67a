"""`ptune plan`: per-device peak memory of a training setup, predicted from the model's config and the run's
config (memory.py for the terms, docs/plan.md for the check against measurements), and the search for the
setups that fit. The modules: arch.py (the model's shapes), request.py (what is asked: the Setup, the
hardware), memory.py (one setup's memory), search.py (the setups a request leaves open), render.py (what
`ptune plan` prints), trace.py (the step traced on a fake CUDA device).

What the rest of ptune (cli, study, bench) uses:

    run(args, trace=0) -> str                  `ptune plan`'s output
    parse_request(args) -> Request             the command line read (Request.hardware: Hardware)
    plan(request) -> [Row]; select(rows)       every setup predicted; the fitting ones, best first
    render(request, rows, trace=0) -> str      the text printed
    setup_from_config(cfg, arch, plan) -> Setup; predict(arch, setup) -> Breakdown; trainable_params
    overrides_for / config_for(setup, request); base_name / engine_label(setup, ...): the tables' words
    resolve_arch(name) -> Arch; BUILTIN; parse_size(text, key); HUB_IDS; GPU_RUNTIME; GiB
"""

from .arch import BUILTIN, Arch, builtin_names, from_hf_config, resolve_arch
from .memory import Breakdown, predict, trainable_params
from .render import engine_label, render
from .request import GPU_RUNTIME, HUB_IDS, GiB, Hardware, Request, Setup, parse_request, parse_size, setup_from_config
from .search import Row, base_name, config_for, overrides_for, plan, select


def run(args: list[str], trace: int = 0) -> str:
    """`ptune plan`'s output; `trace`: how many of the setups listed to trace (plan/trace.py)."""
    req = parse_request(args)
    return render(req, plan(req), trace)


__all__ = [
    "Arch",
    "BUILTIN",
    "builtin_names",
    "from_hf_config",
    "resolve_arch",
    "Breakdown",
    "predict",
    "trainable_params",
    "engine_label",
    "render",
    "GPU_RUNTIME",
    "HUB_IDS",
    "GiB",
    "Hardware",
    "Request",
    "Setup",
    "parse_request",
    "parse_size",
    "setup_from_config",
    "Row",
    "base_name",
    "config_for",
    "overrides_for",
    "plan",
    "select",
    "run",
]
