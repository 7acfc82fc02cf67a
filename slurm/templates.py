"""Slurm job templates and the one-machine cluster script, read from this folder (ptune_dist.slurm; the files
travel as package data: pyproject.toml [tool.setuptools.package-data]).

    template(name) -> the text of slurm/<name> (train.sbatch, gather.sbatch)
    cluster_script() -> the path of slurm/local-cluster.sh
"""

from pathlib import Path

HERE = Path(__file__).parent


def template(name: str) -> str:
    return (HERE / name).read_text()


def cluster_script() -> Path:
    return HERE / "local-cluster.sh"
