"""What may reach a shell script, and how.

Config values end up in sbatch scripts. None of them may run anything: a `;`, `$(...)`, a backtick
or a newline in a job name, path or extra line is refused (values of #SBATCH lines are validated,
since #SBATCH lines cannot quote) or quoted (paths in the script body, with shlex.quote).
"""

from __future__ import annotations

import re
import shlex

from ptune_dist.errors import ConfigError

VALUE = re.compile(r"[A-Za-z0-9_.,:@%+=/-]+")  # used with fullmatch: `$` would let a final newline through
CONSTRAINT = re.compile(r"[A-Za-z0-9_.,:@%+=/&|\[\]*-]+")  # Slurm's feature expressions: a&b, [a|b]
OPTION = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:@%+=/-]+)?")
SETUP = re.compile(r"[A-Za-z0-9_./:=+,@%-]+( +[A-Za-z0-9_./:=+,@%-]+)*")  # plain words: module load x/1.2


def sbatch_value(key: str, value, pattern: re.Pattern = VALUE) -> str:
    text = str(value)
    if not pattern.fullmatch(text):
        raise ConfigError(
            f"{key}={text!r}: not allowed in an sbatch script (letters, digits and "
            f"{'._,:@%+=/-&|[]*' if pattern is CONSTRAINT else '._,:@%+=/-'} only; no spaces, "
            "quotes, ;, $, backticks or newlines)"
        )
    return text


def sbatch_option(key: str, line: str) -> str:
    if not OPTION.fullmatch(line):
        raise ConfigError(
            f"{key} entry {line!r}: expected one sbatch option like --exclusive or "
            "--gres=gpu:4 (no spaces, quotes, ;, $, backticks or newlines)"
        )
    return line


def setup_line(key: str, line: str) -> str:
    if not SETUP.fullmatch(line):
        raise ConfigError(
            f"{key} entry {line!r}: a set-up line is a plain command (e.g. `module load cuda/12.4`, "
            "`source /opt/venv/bin/activate`): words of letters, digits and ._/:=+,@%- only; no "
            ";, &, |, $, backticks, quotes, redirections or newlines"
        )
    return line


def quote(value) -> str:
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ConfigError(f"{text!r}: a path or word with a line break cannot go into a script")
    return shlex.quote(text)


def render(template: str, values: dict[str, str]) -> str:
    """Fill {{name}} markers; every value must already be validated or quoted."""
    out = template
    for name, value in values.items():
        out = out.replace("{{" + name + "}}", value)
    left = re.findall(r"\{\{(\w+)\}\}", out)
    if left:
        raise ValueError(f"template markers without a value: {sorted(set(left))}")
    return out
