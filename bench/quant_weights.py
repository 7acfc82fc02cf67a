"""Weight memory of a frozen base per quantisation: fp32, bf16, int8, nf4, fp4 (4-bit with and without
double quantisation), each loaded by ptune's own loader in a fresh process.

Columns: bytes of parameters + buffers (+ bitsandbytes' quantisation state: scales, codebooks), split
into the quantised linear layers and the rest (embeddings, norms, the tied head); the process's
resident memory after loading minus before (what loading added, with every tensor paged in and the
allocator's free memory given back), allocated (anon) and file-backed (pages of the memory-mapped
weights file that unconverted tensors still point into); its peak RSS (loading converts weights through
temporaries); and the ratio of the weight bytes to fp32's, measured in the same run.

    .venv/bin/python bench/quant_weights.py [--model embedded:smollm2-135m-instruct] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

SETTINGS = {  # name -> overrides
    "fp32": ["model.dtype=float32"],
    "bf16": ["model.dtype=bfloat16"],
    "int8": ["model.quant=int8"],
    "nf4": ["model.quant=nf4"],
    "nf4 + double quant": ["model.quant=nf4", "model.quant_double=true"],
    "fp4": ["model.quant=fp4"],
    "fp4 + double quant": ["model.quant=fp4", "model.quant_double=true"],
    "nf4, bf16 rest + storage": [
        "model.quant=nf4",
        "model.dtype=bfloat16",
        "model.quant_storage=bfloat16",
        "model.quant_compute_dtype=bfloat16",
    ],
}


def rss() -> dict:
    """Resident bytes: anonymous (allocated) and file-backed (pages of memory-mapped files, e.g. the
    safetensors file an unconverted weight still points into)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0][3:].lower()] = int(line.split()[1]) * 1024
    return out


def measure(model_name: str, overrides: list[str]) -> dict:
    """In this process: load once, report bytes."""
    import resource

    import torch

    import ptune_dist  # noqa: F401  (sets the oneDNN ISA cap before torch loads)
    from ptune_dist.config import load_config
    from ptune_dist.model.load import load_base
    from ptune_dist.model.quant import weight_bytes

    cfg = load_config([], [f"model.name_or_path={model_name}", *overrides])
    import gc

    import bitsandbytes  # noqa: F401  (its import is not part of the weights)

    from ptune_dist.runtime import release_free_memory

    def settled_rss() -> int:
        gc.collect()
        release_free_memory()  # give back what loading freed (the allocator keeps it otherwise)
        return rss()

    before = settled_rss()
    model, _ = load_base(cfg.model)
    with torch.no_grad():  # page in every tensor: unconverted weights stay memory-mapped from the file until read
        for t in list(model.parameters()) + list(model.buffers()):
            if t.numel():
                t.view(-1)[:: max(1, 4096 // t.element_size())].sum()
    after = settled_rss()
    sizes = weight_bytes(model)
    if not sizes["quantised"]:  # unquantised: the same split, the block linears vs the rest
        head = model.get_output_embeddings()
        linear = sum(
            p.numel() * p.element_size()
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not head
            for p in m.parameters(recurse=False)
        )
        sizes = {"quantised": linear, "other": sizes["total"] - linear, "total": sizes["total"]}
    return {
        **sizes,
        "anon_added": after["anon"] - before["anon"],
        "file_added": after["file"] - before["file"],
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def machine() -> str:
    import bitsandbytes
    import torch

    from harness import cpu_isa, cpu_name

    return (
        f"{cpu_name()} ({os.cpu_count()} cores, {cpu_isa()}), {platform.system()} {platform.machine()}; "
        f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one setting in this process
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, SETTINGS[args.one])))
        return
    rows = {}
    for name in SETTINGS:
        done = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--one", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            sys.exit(f"{name}: failed\n{done.stderr[-3000:]}")
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 2**20
    ref = rows["fp32"]["total"]
    print(f"model {args.model} on {machine()}\n")
    head = [
        "setting",
        "weights MiB",
        "block linears MiB",
        "rest MiB",
        "vs fp32",
        "RSS added: anon + file MiB",
        "peak RSS MiB",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, r in rows.items():
        cells = [
            name,
            f"{r['total'] / mib:.1f}",
            f"{r['quantised'] / mib:.1f}",
            f"{r['other'] / mib:.1f}",
            f"{r['total'] / ref:.3f}",
            f"{r['anon_added'] / mib:.0f} + {r['file_added'] / mib:.0f}",
            f"{r['peak_rss'] / mib:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
