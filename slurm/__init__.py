"""Slurm job templates and the one-machine cluster script (installed as ptune_dist.slurm)."""

from pathlib import Path

HERE = Path(__file__).parent


def template(name: str) -> str:
    return (HERE / name).read_text()


def cluster_script() -> Path:
    return HERE / "local-cluster.sh"
