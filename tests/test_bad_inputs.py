"""Bad inputs, one row each: what a user gives `ptune`, and what the one-line error must say.

A row of CASES is `(argv, fragment)`:

- `argv`: the arguments of `ptune`, run in-process through `ptune_dist.cli.main(argv)`, from an empty
  temporary working folder (a run that wrongly starts writes there, not into the repository).
  `QUICKSTART` / `MINILM` are the shipped configs. `Dir("name")` in argv stands for a folder prepared
  from FOLDERS["name"] (relative file path -> file text), written under tmp_path before the row runs;
  `Dir("name", "sub/file")` is a path inside it, `Dir(..., key="tasks.0.train")` the override `key=PATH`. Add a
  folder to FOLDERS to give rows files of their own
  (a data file, a checkpoint, a job record).
- `fragment`: text the error must contain (stderr).

Every row must exit with status 2 (a PtuneError, or argparse's usage error), print the fragment on
stderr, and print no traceback. No row may start a Slurm command (sbatch, scontrol, scancel, srun:
`no_slurm_commands` fails the row) or load model weights: a config value is refused by load_config, a
model.kind from the model's config.json, a job id before scontrol/scancel, so the whole table runs in
seconds. Adding a case is one line.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptune_dist.cli import main

ROOT = Path(__file__).parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
MINILM = str(ROOT / "configs" / "minilm_ptuning_v2.yaml")


@dataclass(frozen=True)
class Dir:
    """A folder prepared from FOLDERS[name] (or a path inside it), put in argv when the row runs;
    with `key`, the argument is `key=PATH` (an override naming a file: tasks.0.train=...)."""

    name: str
    inside: str = ""
    key: str = ""


def checkpoint(files: dict) -> dict:
    """A complete checkpoint folder's files: `files` plus the manifest that lists them (atomic.py)."""
    listed = {
        name: {"bytes": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()}
        for name, text in files.items()
    }
    return {**files, "manifest.json": json.dumps({"files": listed})}


BILLING = '{"text": "a", "label": "billing"}\n'


# issue 21: study
STUDY_CELL = {
    "id": "m__prompt_tuning__L4-random__t__s0",
    "parts": ["main"],
    "model": "m",
    "method": "prompt_tuning",
    "prompt_length": 4,
    "init": "random",
    "task": "t",
    "seed": 0,
}


def study_json(**change) -> dict:
    """A study folder whose study.json lists one cell with `change` (a value None: the key left out)."""
    cell = {k: v for k, v in {**STUDY_CELL, **change}.items() if v is not None}
    return {"study.json": json.dumps({"cells": [cell]})}


FOLDERS = {
    "job_option": {"slurm/job.json": '{"kind": "train", "job_id": "--user=root"}'},
    "gather_option": {"slurm/job.json": '{"kind": "sweep", "job_id": "12", "gather_job_id": "-u root"}'},
    "job_newline": {"job.json": '{"job_id": "12\\n13"}'},
    "job_number_list": {"slurm/job.json": '{"job_id": ["12"]}'},
    "job_not_json": {"slurm/job.json": '{"job_id": '},
    "job_not_object": {"slurm/job.json": '["12"]'},
    "job_without_id": {"slurm/job.json": '{"kind": "train"}'},
    "no_job": {"config.yaml": "output_dir: x\n"},
    # a run with a final/ checkpoint (only its config: the rows fail before the weights are read)
    "run": {f"final/{k}": v for k, v in checkpoint({"config.yaml": "output_dir: x\n"}).items()},
    "mine": {"notes.txt": "my notes"},
    "rows": {"in.jsonl": '{"text": "hello"}\n'},
    # data files that do not fit the task, named by file and line
    "null_text": {"train.jsonl": BILLING + '{"text": null, "label": "billing"}\n'},
    "broken_line": {"train.jsonl": BILLING + "\n" + '{"text": oops}\n'},
    "all_bad": {"train.jsonl": '{"label": "billing"}\n{"text": ["a"], "label": "billing"}\n'},
    "json_numbers": {"d.json": "[1, 2, 3]"},
    "csv_header_only": {"d.csv": "text,label\n"},
    "csv_wide_row": {"d.csv": "text,label\na,billing\nhello,a,extra,more\n"},
    "csv_repeated_column": {"d.csv": "text,text,label\na,b,billing\n"},
    "data_folder": {"d.jsonl/x.jsonl": BILLING},
    "text_parquet": {"d.parquet": "text,label\nhello,billing\n"},
    # config files of the wrong shape
    "shape_train": {"c.yaml": "train: 5\n"},
    "shape_tasks": {"c.yaml": "tasks: {name: x}\n"},
    "wrong_type": {"c.yaml": "train: {steps: 1e3}\n"},
    # sweep folders: an earlier sweep, damaged records
    "old_sweep": {
        "sweep.json": '{"grid": {"train.lr": ["0.5"]}, "cells": [{"id": "000", "overrides": '
        '["train.lr=0.5"], "dir": "cells/000"}]}',
        "cells/000/results.json": '{"final": {"support": {"accuracy": 0.9}}}',
    },
    "sweep_list": {"sweep.json": "[]"},
    "sweep_no_grid": {"sweep.json": '{"cells": []}'},
    # a checkpoint whose manifest is JSON of the wrong shape
    "bad_manifest": {"final/config.yaml": "output_dir: x\n", "final/manifest.json": '{"files": []}'},
    # issue 21: writes. A user's files with the names a command writes; a run trained to step 5
    "user_files": {"config.yaml": "mine: 1\n", "results.json": '{"mine": 1}', "results.csv": "mine\n"},
    "trained": {
        f"final/{k}": v for k, v in checkpoint({"config.yaml": "output_dir: x\n", "state.json": '{"step": 5}'}).items()
    },
    # issue 21: study
    "study_escaping_id": study_json(id="../../other-run"),
    "study_no_id": study_json(id=None),
    "study_no_seed": study_json(seed=None),
    "study_text_seed": study_json(seed="0"),
    "study_cells_object": {"study.json": '{"cells": {"id": "x"}}'},
    "study_not_json": {"study.json": '{"cells": ['},
    # issue 21: records: values read back from files ptune wrote, each with its type and domain
    "job_ids_text": {"slurm/job.json": '{"kind": "study", "job_ids": "4242"}'},
    "job_ids_number": {"slurm/job.json": '{"kind": "study", "job_ids": 4242}'},
    "job_ids_option": {"slurm/job.json": '{"kind": "study", "job_ids": ["12", "--user=x"]}'},
    "job_id_number": {"slurm/job.json": '{"kind": "train", "job_id": 4242}'},
    "job_kind_list": {"slurm/job.json": '{"kind": ["train"], "job_id": "12"}'},
    "pickle_model": {"config.json": '{"model_type": "llama"}', "pytorch_model.bin": "not read"},
    "sweep_cell_escape": {
        "sweep.json": '{"grid": {"train.lr": ["0.5"]}, "cells": [{"id": "000", "overrides": '
        '["train.lr=0.5"], "dir": "../../other-run"}]}'
    },
    "sweep_cell_id": {
        "sweep.json": '{"grid": {"train.lr": ["0.5"]}, "cells": [{"id": "../x", "overrides": '
        '["train.lr=0.5"], "dir": "cells/../x"}]}'
    },
}

CASES = [
    # numbers outside their domain (schema.number), named by their dotted key
    (["train", QUICKSTART, "train.lr=inf"], "train.lr=inf must be a finite number"),
    (["train", QUICKSTART, "train.lr=nan"], "train.lr=nan must be a finite number"),
    (["train", QUICKSTART, "train.lr=-inf"], "train.lr=-inf must be a finite number"),
    (["train", QUICKSTART, "train.lr=0"], "train.lr=0.0 must be in (0, 1000.0]"),
    (["train", QUICKSTART, "train.save_every=-1"], "train.save_every=-1 must be >= 0"),
    (["train", QUICKSTART, "train.max_grad_norm=-1"], "train.max_grad_norm=-1.0 must be >= 0 (0: no clipping)"),
    (["train", QUICKSTART, "train.max_grad_norm=nan"], "train.max_grad_norm=nan must be a finite number"),
    (["train", QUICKSTART, "train.weight_decay=-0.01"], "train.weight_decay=-0.01 must be >= 0"),
    (["train", QUICKSTART, "train.betas=[0.9, 1.0]"], "train.betas=[0.9, 1.0]: every value must be in [0, 1)"),
    (["train", QUICKSTART, "train.betas=[-0.1, 0.999]"], "train.betas=[-0.1, 0.999]: every value must be in [0, 1)"),
    (["train", QUICKSTART, "train.betas=[0.9, inf]"], "train.betas=[0.9, inf]: every value must be a finite number"),
    (["train", QUICKSTART, "train.threads=-1"], "train.threads=-1 must be >= 0"),
    (["train", QUICKSTART, "train.seed=-1"], "train.seed=-1 must be in [0, 4294967295]"),
    (["train", QUICKSTART, "train.max_skipped_steps=0"], "train.max_skipped_steps=0 must be > 0"),
    (["train", QUICKSTART, "train.keep_checkpoints=0"], "train.keep_checkpoints=0 must be > 0"),
    (["train", QUICKSTART, "data.max_train_examples=-1"], "data.max_train_examples=-1 must be >= 0 (0: all)"),
    (["train", QUICKSTART, "data.max_eval_examples=-1"], "data.max_eval_examples=-1 must be >= 0 (0: all)"),
    (["train", QUICKSTART, "model.dropout=nan"], "model.dropout=nan must be a finite number"),
    (["train", QUICKSTART, "method.init_scale=-0.5"], "method.init_scale=-0.5 must be > 0"),
    (["train", QUICKSTART, "tasks.0.max_new_tokens=0"], "tasks.0.max_new_tokens=0 must be > 0"),
    (["train", QUICKSTART, "distributed.timeout_s=0"], "distributed.timeout_s=0 must be > 0"),
    (["train", QUICKSTART, "launch.nproc_per_node=0"], "launch.nproc_per_node=0 must be > 0"),
    (["train", QUICKSTART, "launch.nnodes=0"], "launch.nnodes=0 must be > 0"),
    (["train", QUICKSTART, "launch.signal_seconds=-5"], "launch.signal_seconds=-5 must be in [0, 65535]"),
    (["train", QUICKSTART, "launch.gpus_per_node=-1"], "launch.gpus_per_node=-1 must be >= 0"),
    (["launch", QUICKSTART, "launch.nproc_per_node=0", "--dry-run"], "launch.nproc_per_node=0 must be > 0"),
    (
        ["launch", QUICKSTART, "launch.nnodes=2", "launch.node_rank=2", "launch.rdzv_endpoint=n0:29400", "--dry-run"],
        "launch.node_rank=2 must be < launch.nnodes=2",
    ),
    # other values, before any model loads
    (["train", QUICKSTART, "output_dir="], "output_dir is empty"),
    (["train", QUICKSTART, "tasks.0.name="], "tasks.0.name='': a task name is letters, digits, _ and - only"),
    (["train", QUICKSTART, "tasks.0.name=sup.port"], "tasks.0.name='sup.port'"),
    (["train", QUICKSTART, "tasks.0.name=../x"], "tasks.0.name='../x'"),
    (["train", QUICKSTART, "tasks.0.name=a b"], "tasks.0.name='a b'"),
    # a model kind the model does not have: from its config.json, before the weights
    (
        ["train", QUICKSTART, "model.kind=masked_lm"],
        "model.kind=masked_lm: embedded:smollm2-135m-instruct (LlamaConfig) "
        "has no masked_lm model; the kinds it has: causal_lm, encoder",
    ),
    (
        ["train", MINILM, "model.kind=causal_lm"],
        "model.kind=causal_lm: embedded:all-minilm-l6-v2 (BertConfig) has no "
        "causal_lm model; the kinds it has: masked_lm, encoder",
    ),
    # the rendezvous endpoint: host:port, validated with the config
    (["launch", QUICKSTART, "launch.nnodes=2", "--dry-run"], "launch.rdzv_endpoint is empty, but launch.nnodes=2"),
    (
        ["launch", QUICKSTART, "launch.nnodes=2", "launch.rdzv_endpoint=$(id):29400", "--dry-run"],
        "launch.rdzv_endpoint='$(id):29400': expected host:port",
    ),
    (
        ["launch", QUICKSTART, "launch.nnodes=2", "launch.rdzv_endpoint=10.0.0.5", "--dry-run"],
        "launch.rdzv_endpoint='10.0.0.5': expected host:port",
    ),
    (
        ["launch", QUICKSTART, "launch.nnodes=2", "launch.rdzv_endpoint=10.0.0.5:70000", "--dry-run"],
        "launch.rdzv_endpoint='10.0.0.5:70000'",
    ),
    (
        ["launch", QUICKSTART, "launch.nnodes=2", "launch.rdzv_endpoint=fd00::5:29400", "--dry-run"],
        "launch.rdzv_endpoint='fd00::5:29400'",
    ),
    (["train", QUICKSTART, "launch.rdzv_endpoint=h;touch x:1"], "launch.rdzv_endpoint='h;touch x:1'"),
    # job ids: typed or read back from job.json, checked before scontrol / scancel see them
    (["cancel", Dir("job_option")], "slurm/job.json: job_id='--user=root' is not a Slurm job id"),
    (["status", Dir("job_option")], "slurm/job.json: job_id='--user=root' is not a Slurm job id"),
    (["cancel", Dir("gather_option")], "slurm/job.json: gather_job_id='-u root' is not a Slurm job id"),
    (["status", Dir("job_newline")], "job.json: job_id='12\\n13' is not a Slurm job id"),
    (["status", Dir("job_number_list")], "job.json: job_id=['12'] is not a Slurm job id"),
    (["status", Dir("job_not_json")], "slurm/job.json: not a job record (not JSON"),
    (["status", Dir("job_not_object")], "slurm/job.json: not a job record"),
    (["cancel", Dir("job_without_id")], "slurm/job.json: no job_id in it"),
    (["status", Dir("no_job")], "a folder without slurm/job.json"),
    (["cancel", "12;id"], "'12;id': neither a Slurm job id"),
    (["cancel", "1_2_3"], "neither a Slurm job id"),
    (["status", "12_"], "neither a Slurm job id"),
    (["status", "\uff11\uff12"], "neither a Slurm job id"),  # full-width digits: str.isdigit() says yes
    (["train", QUICKSTART, "train.lr=1e38"], "train.lr=1e+38 must be in (0, 1000.0]"),
    (
        ["train", QUICKSTART, "train.on_nonfinite=skip", "distributed.engine=deepspeed"],
        "train.on_nonfinite=skip needs distributed.engine=torch",
    ),
    # data rows that do not fit the task: the file, the line, the field (data/rows.py)
    (["train", QUICKSTART, Dir("null_text", "train.jsonl", key="tasks.0.train")], "line 2: field 'text' holds null"),
    (["train", QUICKSTART, Dir("broken_line", "train.jsonl", key="tasks.0.train")], "line 3: not valid JSON"),
    (
        ["train", QUICKSTART, Dir("all_bad", "train.jsonl", key="tasks.0.train"), "data.on_bad_row=skip"],
        "none of the 2 rows fits the task",
    ),
    # what a command writes: never its own input, nothing existing without --force (checkpoint/target.py)
    (["export", Dir("run"), "--out", Dir("run")], "holds the input"),
    (["export", Dir("run"), "--out", Dir("run", "final"), "--force"], "is the input"),
    (["export", Dir("run"), "--out", Dir("mine")], "already exists; choose a new --out, or pass --force"),
    (["import", Dir("run", "final"), "--out", Dir("run"), "--force"], "is the input"),
    (["predict", Dir("run"), "--input", Dir("rows", "in.jsonl"), "--output", Dir("mine")], "--output"),
    (
        ["predict", Dir("run"), "--input", Dir("rows", "in.jsonl"), "--output", Dir("mine", "notes.txt")],
        "already exists",
    ),
    (
        [
            "predict",
            Dir("run"),
            "--input",
            Dir("rows", "in.jsonl"),
            "--output",
            Dir("run", "final/preds.jsonl"),
            "--force",
        ],
        "is inside the input",
    ),
    (["predict", Dir("run"), "--input", "/dev/null"], "--input /dev/null: no rows (the file is empty)"),
    (["eval", Dir("bad_manifest")], "no readable manifest.json"),
    # data files: parsed by ptune, named by file and line (data/sources.py)
    (
        ["train", QUICKSTART, Dir("json_numbers", "d.json", key="tasks.0.train")],
        "d.json row 0 (line 1): expected a JSON object",
    ),
    (["train", QUICKSTART, Dir("csv_header_only", "d.csv", key="tasks.0.train")], "d.csv: no rows, only a header"),
    (
        ["train", QUICKSTART, Dir("csv_wide_row", "d.csv", key="tasks.0.train")],
        "d.csv line 3 has 4 fields, the header has 2",
    ),
    (["train", QUICKSTART, Dir("csv_repeated_column", "d.csv", key="tasks.0.train")], "names the column 'text' twice"),
    (["train", QUICKSTART, Dir("data_folder", "d.jsonl", key="tasks.0.train")], "d.jsonl is a folder; give a file"),
    (["train", QUICKSTART, Dir("text_parquet", "d.parquet", key="tasks.0.train")], "d.parquet: not a Parquet file"),
    (["train", QUICKSTART, "tasks.0.train=/dev/null"], "data file /dev/null is not a regular file"),
    # config files and overrides: shape, keys, text kept as written (config/shape.py, load.py)
    (["train", QUICKSTART, Dir("shape_train", "c.yaml")], "c.yaml: train must be a mapping of train.* keys, found 5"),
    (["train", QUICKSTART, Dir("shape_tasks", "c.yaml")], "tasks must be a list of mappings"),
    (["train", QUICKSTART, Dir("wrong_type", "c.yaml")], "config key train.steps: Value '1e3'"),
    (["train", QUICKSTART, Dir("mine")], "is a folder, not a YAML file"),
    (["train", QUICKSTART, "=x"], "override '=x': the key before '=' is empty"),
    (["train", QUICKSTART, "tasks.5.name=x"], "tasks.5: the config has 1 task (tasks.0)"),
    (["launch", QUICKSTART, "launch.setup=[a: b]", "--dry-run"], "launch.setup.0 must be text, found a mapping"),
    (["train", QUICKSTART, "tasks.0.verbalizer={a: [], b: [' no']}"], "tasks.0.verbalizer.a: no label words"),
    (["train", QUICKSTART, "train.threads=1099511627776"], "train.threads=1099511627776 must be <= 65536"),
    (["train", QUICKSTART, "distributed.timeout_s=" + str(10**30)], "must be <= 2592000 (30 days"),
    (["train", QUICKSTART, "train.resume=Never"], "train.resume='Never': no such folder (did you mean never?)"),
    (["train", QUICKSTART, "tasks.0.template=no slot here"], "uses no field of the rows"),
    (["train", QUICKSTART, "tasks.0.labels=[billing, billing]", "tasks.0.scoring=head"], "'billing' given twice"),
    (["train", QUICKSTART, "model.name_or_path="], "model.name_or_path is empty"),
    (["train", QUICKSTART, "tasks.0.train=hub:"], "no dataset name after hub:"),
    (["status", ""], "the argument is empty"),
    (["launch", QUICKSTART, "--dry-run", "launch.nproc_per_node=0"], "launch.nproc_per_node=0 must be > 0"),
    (["train", "train.steps=1"], "ptune train: error: give at least one config file"),
    (
        ["predict", Dir("run", "final"), "--input", Dir("rows", "in.jsonl"), "--output", Dir("run", "results.json")],
        "is inside the input",
    ),
    (
        ["sweep", QUICKSTART, Dir("run", key="output_dir"), "launch.backend=slurm", "--grid", "train.lr=0.1,0.2"],
        "holds final",
    ),
    # sweeps and launches: grids, folders, records (launcher/sweep.py, launcher/__init__.py)
    (
        [
            "sweep",
            QUICKSTART,
            "output_dir=sw",
            "launch.backend=slurm",
            "--grid",
            "train.lr=0.1,0.2",
            "--grid",
            "train.lr=0.3",
        ],
        "--grid train.lr=... is given twice",
    ),
    (
        ["sweep", QUICKSTART, "output_dir=sw", "--grid", "train.lr=0.1,0.1", "--dry-run"],
        "sweep.grid.train.lr: '0.1' given twice",
    ),
    (
        ["sweep", QUICKSTART, "output_dir=sw", "--grid", "launch.backend=local,slurm", "--dry-run"],
        "sweep.grid.launch.backend: a grid varies what each cell trains, not how the sweep is started",
    ),
    (
        ["sweep", QUICKSTART, Dir("old_sweep", key="output_dir"), "launch.backend=slurm", "--grid", "train.lr=0.1,0.2"],
        "holds another sweep (train.lr: 0.5 there, 0.1,0.2 here)",
    ),
    (
        ["launch", QUICKSTART, Dir("mine", "notes.txt", key="output_dir"), "launch.backend=slurm"],
        "is a file, not a folder; choose another output_dir",
    ),
    (
        ["launch", QUICKSTART, Dir("mine", "notes.txt/sub", key="output_dir"), "launch.backend=slurm"],
        "notes.txt is a file, not a folder; choose another output_dir",
    ),
    (
        [
            "sweep",
            QUICKSTART,
            Dir("mine", "notes.txt", key="output_dir"),
            "launch.backend=slurm",
            "--grid",
            "train.lr=0.1,0.2",
        ],
        "is a file, not a folder; choose another output_dir",
    ),
    (["gather", Dir("sweep_list")], "sweep.json: expected a JSON object with grid and cells"),
    (["gather", Dir("sweep_no_grid")], 'sweep.json: "grid" is not'),
    (
        ["fetch-models", "nope-model"],
        "'nope-model' is not an embedded model; known: all-minilm-l6-v2, gemma-3-270m, smollm2-135m-instruct",
    ),
    (["plan", "model=llama-2-7b", "hardware.gpu_mem=24"], "hardware.gpu_mem='24': a size needs its unit"),
    (["plan", "model=llama-2-7b", "hardware.gpus=" + "9" * 30], "must be <= 1024"),
    # issue 21: writes. One folder rule (checkpoint/folder_rule.py): files the command did not create are
    # refused, named; a trained final/ is never replaced by a less trained run (train/keep_trained.py)
    (
        [
            "train",
            QUICKSTART,
            Dir("user_files", key="output_dir"),
            "train.steps=1",
            "data.max_train_examples=8",
            "data.max_eval_examples=4",
            "train.eval_baseline=false",
        ],
        "holds config.yaml, results.csv, results.json: files ptune train did not create",
    ),
    (
        [
            "train",
            QUICKSTART,
            Dir("mine", key="output_dir"),
            "train.steps=1",
            "data.max_train_examples=8",
            "data.max_eval_examples=4",
            "train.eval_baseline=false",
        ],
        "holds notes.txt: files ptune train did not create",
    ),
    (["launch", QUICKSTART, Dir("user_files", key="output_dir"), "--dry-run"], "files ptune train did not create"),
    (
        ["sweep", QUICKSTART, Dir("mine", key="output_dir"), "--grid", "train.lr=0.1,0.2", "--dry-run"],
        "holds notes.txt: files ptune sweep did not create",
    ),
    (
        [
            "study",
            QUICKSTART,
            Dir("user_files", key="output_dir"),
            "study.models=[embedded:smollm2-135m-instruct]",
            "--dry-run",
        ],
        "holds config.yaml, results.csv, results.json: files ptune study did not create",
    ),
    (
        ["train", QUICKSTART, Dir("trained", key="output_dir"), "train.steps=0", "data.max_eval_examples=4"],
        "holds a run trained to step 5",
    ),
    (
        [
            "train",
            QUICKSTART,
            Dir("trained", key="output_dir"),
            "train.steps=2",
            "data.max_train_examples=8",
            "data.max_eval_examples=4",
            "train.eval_baseline=false",
        ],
        "would replace with a less trained one",
    ),
    # issue 21: study: study.json read back with its types and domains; the dry run checks each cell's run
    (
        ["study", "status", Dir("study_escaping_id")],
        "study.json: cell 0 (../../other-run): id='../../other-run' is not a plain folder name",
    ),
    (["study", "report", Dir("study_escaping_id")], "is not a plain folder name"),
    (["study", "ensemble", Dir("study_escaping_id")], "is not a plain folder name"),
    (["study", "status", Dir("study_no_id")], "study.json: cell 0: 'id' is missing; run `ptune study CONFIG`"),
    (
        ["study", "report", Dir("study_no_seed")],
        "study.json: cell 0 (m__prompt_tuning__L4-random__t__s0): 'seed' "
        "is missing; run `ptune study CONFIG` with output_dir there",
    ),
    (["study", "report", Dir("study_text_seed")], "seed='0' is not a whole number >= 0"),
    (["study", "status", Dir("study_cells_object")], "study.json: cells={'id': 'x'} is not a list (dict found)"),
    (["study", "status", Dir("study_not_json")], "study.json: not a study description `ptune study` writes"),
    (
        [
            "study",
            QUICKSTART,
            "study.models=[embedded:smollm2-135m-instruct]",
            "study.methods=[prompt_tuning]",
            "study.prompt_length=100",
            "study.prompt_lengths=[100]",
            "study.init=random",
            "study.inits=[random]",
            "study.seeds=[0]",
            "data.max_length=64",
            "output_dir=st",
            "--dry-run",
        ],
        "study cell smollm2-135m-instruct__prompt_tuning__L100-random__support__s0: tasks.0.train='builtin:support' "
        "row 0: 115 tokens > 64 allowed (data.max_length",
    ),
    # issue 21: records: a job record's values with their types; nothing reaches scancel or scontrol
    (["cancel", Dir("job_ids_text")], "slurm/job.json: job_ids='4242' is not a list (str found)"),
    (["status", Dir("job_ids_text")], "slurm/job.json: job_ids='4242' is not a list (str found)"),
    (["cancel", Dir("job_ids_number")], "slurm/job.json: job_ids=4242 is not a list (int found)"),
    (["cancel", Dir("job_ids_option")], "job_ids=['12', '--user=x'] is not a Slurm job id"),
    (["cancel", Dir("job_id_number")], "slurm/job.json: job_id=4242 is not a Slurm job id"),
    (["cancel", Dir("job_kind_list")], "slurm/job.json: kind=['train'] is not one of 'train', 'sweep', 'study'"),
    (
        ["train", QUICKSTART, Dir("pickle_model", key="model.name_or_path")],
        "holds only pickle weights (pytorch_model.bin)",
    ),
    (["gather", Dir("sweep_cell_escape")], "cells[0]: dir='../../other-run' is not this sweep's folder for cell 000"),
    (["gather", Dir("sweep_cell_id")], "cells[0]: id='../x' is not a plain folder name"),
]


def prepare(arg, tmp_path: Path) -> str:
    if not isinstance(arg, Dir):
        return arg
    folder = tmp_path / "folders" / arg.name
    for rel, text in FOLDERS[arg.name].items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    path = str(folder / arg.inside) if arg.inside else str(folder)
    return f"{arg.key}={path}" if arg.key else path


@pytest.fixture
def no_slurm_commands(monkeypatch):
    real = subprocess.run

    def run(cmd, *args, **kwargs):
        if (
            isinstance(cmd, (list, tuple))
            and cmd
            and Path(str(cmd[0])).name in ("sbatch", "scontrol", "scancel", "srun")
        ):
            pytest.fail(f"a bad input reached {cmd!r}")
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)


@pytest.mark.parametrize(
    "argv, fragment",
    CASES,
    ids=[" ".join(map(str, a[1:])) if a[0] in ("train", "launch") else " ".join(map(str, a)) for a, _ in CASES],
)
def test_bad_input_is_one_clear_error(argv, fragment, tmp_path, monkeypatch, capsys, no_slurm_commands):
    argv = [prepare(a, tmp_path) for a in argv]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert fragment in err, err
    assert "Traceback" not in out + err


def test_a_model_folder_with_only_pickle_weights_is_refused_by_name(tmp_path, monkeypatch, capsys):
    """issue 21: a real model folder (config, tokenizer) whose weights are only pytorch_model.bin: one error
    naming the folder and the way to convert, before the data is encoded; the pickle is never opened."""
    import shutil

    import torch

    from ptune_dist import embedded

    source, folder = Path(embedded.resolve("embedded:smollm2-135m-instruct")), tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(source / name, folder / name)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle, never opened")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load opened the pickle"))
    monkeypatch.chdir(tmp_path)
    code = main(["train", QUICKSTART, f"model.name_or_path={folder}", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{folder} holds only pickle weights (pytorch_model.bin)" in err and "safetensors" in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing of a run written (the lock aside)
