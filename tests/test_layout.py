"""The repository root on sys.path shadows no other distribution's package, and ptune_dist's parts are where
static tools look for them.

kernels/, launcher/ and slurm/ stay at the root (the project's card) as namespace portions (no __init__.py), and
ptune_dist/kernels, /launcher, /slurm are relative symlinks to them. So with the root first on sys.path (as
`python -m pytest` and `python -c` from the root put it), a regular package named `kernels` anywhere later on the
path wins `import kernels` (Hugging Face's, which transformers and bitsandbytes import), and
`ptune_dist.kernels.<module>` is still found, by the plain path finder, in the same process, loaded once.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACES = {
    "kernels": "ptune_dist.kernels.api",
    "launcher": "ptune_dist.launcher.launch",
    "slurm": "ptune_dist.slurm.templates",
}


@pytest.mark.parametrize("name", sorted(FACES))
def test_a_regular_package_later_on_the_path_wins_over_the_roots_folder(name, tmp_path):
    stand_in = tmp_path / name
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("STAND_IN = True\n")
    code = (
        "import sys\n"
        f"assert sys.path[0] == '', sys.path[:2]\n"  # -c: the current directory (the root) first
        f"import {name}\n"
        f"assert getattr({name}, 'STAND_IN', False), {name}.__path__\n"
        f"import {FACES[name]} as face\n"
        "import ptune_dist\n"
        "print(face.__file__)\n"
        f"doubles = sorted(m for m in sys.modules if m.startswith('{name}.'))\n"
        "assert not doubles, doubles\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip()) == ROOT / "ptune_dist" / name / (FACES[name].rsplit(".", 1)[1] + ".py")


def test_the_roots_folders_are_namespace_portions_linked_into_ptune_dist():
    for name in FACES:
        assert not (ROOT / name / "__init__.py").exists(), f"{name}/__init__.py makes {name}/ a regular package"
        link = ROOT / "ptune_dist" / name
        assert link.is_symlink() and link.readlink() == Path("..", name), f"ptune_dist/{name} must link to ../{name}"


def test_without_a_stand_in_the_roots_kernels_is_an_empty_namespace():
    import importlib.metadata

    try:
        importlib.metadata.version("kernels")
        pytest.skip("Hugging Face's kernels is installed here: the first test covers it")
    except importlib.metadata.PackageNotFoundError:
        pass
    # what transformers' is_kernels_available and bitsandbytes' `from kernels import get_kernel` see from the root
    # when Hugging Face's kernels is not installed: a namespace with no __file__ and nothing of ours run
    code = (
        "import sys, kernels\n"
        "assert getattr(kernels, '__file__', None) is None\n"
        "try:\n    from kernels import get_kernel\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('get_kernel found')\n"
        "assert not [m for m in sys.modules if m.startswith('kernels.')]\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if "No module named 'kernels'" in done.stderr:
        pytest.fail("the root's kernels/ was not found as a namespace portion: " + done.stderr[-500:])
    assert done.returncode == 0, done.stderr[-3000:]
