"""The tree passes ruff's lint and format checks, as configured in pyproject.toml [tool.ruff] (line length 120,
Python 3.10, lint rules E, F, W, I (import order), UP; double quotes). The ruff is the venv's (pinned in
constraints.txt, installed by scripts/setup.sh with the dev extra): its version decides what passes.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ruff() -> str:
    """The ruff binary of the installed ruff package (beside this Python, or beside the package for an install
    reused from another venv), else ruff on PATH."""
    try:
        from ruff.__main__ import find_ruff_bin

        return str(find_ruff_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("ruff")
    if found is None:
        pytest.skip(
            "no ruff binary: neither the ruff package nor ruff on PATH (scripts/setup.sh installs it with '.[dev]')"
        )
    return found


@pytest.mark.parametrize(
    "args", [["check", "--no-cache"], ["format", "--check", "--no-cache"]], ids=["check", "format"]
)
def test_ruff_passes(args):
    done = subprocess.run([ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff {' '.join(args)} .:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
