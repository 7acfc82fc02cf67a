"""Config loading: YAML + overrides onto the schema; every error names the key and what is allowed."""

import dataclasses
import math
import typing
from pathlib import Path

import pytest

from ptune_dist.config import RunConfig, from_yaml, load_config, to_yaml, validate
from ptune_dist.config.validate import rdzv_address
from ptune_dist.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("train:\n  steps: 7\ntasks:\n  - name: x\n    preset: support\n")
    cfg = load_config([f], ["train.lr=0.5", "tasks.0.template={text} Team:{answer}", "data.truncation=right"])
    assert (cfg.train.steps, cfg.train.lr, cfg.tasks[0].name) == (7, 0.5, "x")
    assert cfg.tasks[0].template == "{text} Team:{answer}"  # YAML-unreadable text stays a string
    assert from_yaml(to_yaml(cfg)) == cfg


def test_later_files_win(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("method:\n  name: prefix_tuning\n  num_virtual_tokens: 4\n")
    b.write_text("method:\n  num_virtual_tokens: 9\n")
    cfg = load_config([a, b])
    assert (cfg.method.name, cfg.method.num_virtual_tokens) == ("prefix_tuning", 9)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.stepz=3", ["train.stepz", "steps"]),
        ("train.steps=abc", ["train.steps"]),
        ("method.name=lora", ["method.name", "prompt_tuning"]),
        ("model.dtype=int3", ["model.dtype", "bfloat16"]),
        ("data.batch_size=0", ["data.batch_size", "> 0"]),
        ("method.num_virtual_tokens=-1", ["method.num_virtual_tokens"]),
        ("train.betas=[0.9]", ["train.betas"]),
        ("model.dropout=1.5", ["model.dropout"]),
        ("method.init=text", ["method.init_text"]),
        ("nonsense", ["key=value"]),
    ],
)
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config([], [override])
    for w in words:
        assert w in str(e.value)


def test_impossible_combinations():
    with pytest.raises(ConfigError, match=r"tasks.0.template places \{soft\}"):
        load_config([], ["method.name=prefix_tuning", "tasks.0.template={soft} {text}{answer}"])
    with pytest.raises(ConfigError, match="one type only"):
        load_config([], ["tasks=[{name: a}, {name: b, type: generation}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config([], ["tasks=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigError, match="token_classification needs scoring=head"):
        load_config([], ["tasks.0.type=token_classification"])
    with pytest.raises(ConfigError, match="p_tuning_v2 without projection"):
        load_config([], ["method.name=p_tuning_v2", "method.init=vocab"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["distributed.zero_stage=3"], "need distributed.engine=deepspeed"),
        (["distributed.engine=deepspeed", "distributed.zero_stage=4"], "zero_stage=4 must be in"),
        (["distributed.engine=deepspeed", "distributed.offload_optimizer=true"], "offload_optimizer needs"),
        (
            ["distributed.engine=deepspeed", "distributed.zero_stage=2", "distributed.offload_params=true"],
            "offload_params needs",
        ),
        (
            ["distributed.engine=deepspeed", "distributed.zero_extra={stage: 3}"],
            r"zero_extra.stage: set distributed.zero_stage",
        ),
        (
            ["distributed.engine=deepspeed", "distributed.zero_extra={offload_param: {device: cpu}}"],
            "distributed.offload_params",
        ),
        (["distributed.engine=deepspeed", "train.optimizer=adafactor"], "train.optimizer=adafactor"),
    ],
)
def test_distributed_settings_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config([], overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([bad])
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([top])


def test_overrides_keep_text_as_written():
    cfg = load_config(
        [],
        [
            "tasks.0.template=Q #1: {text}{answer}",
            "tasks.0.labels=[yes, no]",
            "method.init_text=no",
            "tasks.0.name=1e3",
            "tasks.0.verbalizer={yes: [' yes'], no: [' no']}",
            "model.dropout=null",
            "train.steps=5",
            "train.betas=[0.8, 0.99]",
            "train.tensorboard=false",
            "output_dir=#1",
        ],
    )
    t = cfg.tasks[0]
    assert t.template == "Q #1: {text}{answer}" and t.labels == ["yes", "no"] and t.name == "1e3"
    assert cfg.method.init_text == "no" and t.verbalizer == {"yes": [" yes"], "no": [" no"]}
    assert cfg.model.dropout is None and cfg.train.steps == 5 and cfg.train.betas == [0.8, 0.99]
    assert cfg.train.tensorboard is False and cfg.output_dir == "#1"
    cfg = load_config([], ["tasks=[{name: a, labels: [true, false]}, {name: b}]"])
    assert cfg.tasks[0].labels == ["true", "false"] and cfg.tasks[1].name == "b"


NUMERIC = {int, float, typing.Optional[int], typing.Optional[float], typing.List[int], typing.List[float]}


def schema_fields(cls, prefix=""):
    """(dotted key, type, field) of every field of the schema, task fields as tasks.N.*"""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from schema_fields(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from schema_fields(typing.get_args(tp)[0], f"{prefix}{f.name}.N.")
        else:
            yield f"{prefix}{f.name}", tp, f


def test_every_numeric_key_declares_its_domain():
    """A new int/float key must say what it accepts (schema.number / numbers), or this fails."""
    numeric = [(key, f) for key, tp, f in schema_fields(RunConfig) if tp in NUMERIC]
    assert len(numeric) > 30
    missing = [key for key, f in numeric if "domain" not in f.metadata]
    assert not missing, f"numeric config keys without a domain (schema.number): {missing}"
    unknown = [key for key, tp, f in schema_fields(RunConfig) if tp not in NUMERIC and "domain" in f.metadata]
    assert not unknown  # a domain on a non-numeric field would never be checked as meant


def test_every_default_is_in_its_domain():
    cfg = load_config([], [])
    for key, tp, f in schema_fields(RunConfig):
        if "domain" in f.metadata and ".N." not in key:
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            for v in value if isinstance(value, list) else [value]:
                assert v is None or f.metadata["domain"].problem(v) is None, key


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=inf", "train.lr=inf must be a finite number"),
        ("train.lr=nan", "train.lr=nan must be a finite number"),
        ("train.lr=-inf", "train.lr=-inf must be a finite number"),
        ("train.max_grad_norm=nan", "train.max_grad_norm=nan must be a finite number"),
        ("model.dropout=inf", "model.dropout=inf must be a finite number"),
        ("train.betas=[0.9, nan]", "train.betas=[0.9, nan]: every value must be a finite number"),
        ("train.betas=[0.9, 1.0]", "train.betas=[0.9, 1.0]: every value must be in [0, 1)"),
        ("train.betas=[-0.1, 0.9]", "train.betas=[-0.1, 0.9]: every value must be in [0, 1)"),
        ("train.save_every=-1", "train.save_every=-1 must be >= 0 (0: only at the end)"),
        ("train.max_grad_norm=-1", "train.max_grad_norm=-1.0 must be >= 0 (0: no clipping)"),
        ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be >= 0"),
        ("train.threads=-2", "train.threads=-2 must be >= 0"),
        ("train.seed=-1", "train.seed=-1 must be in [0, 4294967295]"),
        ("train.max_skipped_steps=0", "train.max_skipped_steps=0 must be > 0"),
        ("data.max_train_examples=-5", "data.max_train_examples=-5 must be >= 0 (0: all)"),
        ("tasks.0.max_new_tokens=0", "tasks.0.max_new_tokens=0 must be > 0"),
        ("method.init_scale=0", "method.init_scale=0.0 must be > 0"),
        ("launch.nproc_per_node=0", "launch.nproc_per_node=0 must be > 0"),
        ("launch.nnodes=0", "launch.nnodes=0 must be > 0"),
        ("launch.signal_seconds=-1", "launch.signal_seconds=-1 must be in [0, 65535]"),
        ("distributed.timeout_s=0", "distributed.timeout_s=0 must be > 0"),
    ],
)
def test_numbers_outside_their_domain(override, message):
    with pytest.raises(ConfigError) as e:
        load_config([], [override])
    assert str(e.value).startswith(message), str(e.value)


def test_zero_keeps_its_meaning():
    cfg = load_config(
        [],
        [
            "train.save_every=0",
            "train.max_grad_norm=0",
            "data.max_train_examples=0",
            "train.threads=0",
            "train.weight_decay=0",
            "train.betas=[0, 0]",
            "launch.signal_seconds=0",
            "train.steps=0",
        ],
    )
    assert cfg.train.max_grad_norm == 0.0 and cfg.train.betas == [0.0, 0.0]
    assert not math.isnan(cfg.train.lr)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["output_dir="], "output_dir is empty"),
        (["output_dir=  "], "output_dir is empty"),
        (["tasks.0.name="], "tasks.0.name='': a task name is letters, digits, _ and - only"),
        (["tasks.0.name=a.b"], "tasks.0.name='a.b'"),
        (["tasks.0.name=a/b"], "tasks.0.name='a/b'"),
        (["tasks.0.name=a b"], "tasks.0.name='a b'"),
        (["tasks=[{name: ok-1}, {name: 'x:y'}]"], "tasks.1.name='x:y'"),
        (
            ["launch.nnodes=2", "launch.node_rank=2", "launch.rdzv_endpoint=h:1"],
            "launch.node_rank=2 must be < launch.nnodes=2",
        ),
        (["launch.node_rank=1"], "launch.node_rank=1 must be < launch.nnodes=1"),
        (["launch.nnodes=2"], "launch.rdzv_endpoint is empty, but launch.nnodes=2 on the local backend"),
        (["launch.rdzv_endpoint=node0"], "launch.rdzv_endpoint='node0': expected host:port"),
    ],
)
def test_other_values_checked_before_any_model(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config([], overrides)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize(
    "endpoint, address",
    [
        ("10.0.0.5:29400", ("10.0.0.5", 29400)),
        ("node-0.cluster.local:1", ("node-0.cluster.local", 1)),
        ("[fd00::5]:65535", ("fd00::5", 65535)),
        ("[fe80::1%eth0]:29400", ("fe80::1%eth0", 29400)),
        ("n1:29400", ("n1", 29400)),
    ],
)
def test_rdzv_endpoints_accepted(endpoint, address):
    assert rdzv_address(endpoint) == address


@pytest.mark.parametrize(
    "endpoint",
    [
        "10.0.0.5",
        "10.0.0.5:0",
        "10.0.0.5:65536",
        "10.0.0.5:-1",
        "10.0.0.5:http",
        "999.0.0.1:29400",
        ":29400",
        "fd00::5:29400",
        "[fd00::zz]:29400",
        "[fe80::1%a;b]:1",
        "-host:1",
        "host_name:1",
        "a b:1",
        "h:1\n",
        "h;rm -rf:1",
        "$(id):1",
        "h:１２",
    ],
)
def test_rdzv_endpoints_refused(endpoint):
    with pytest.raises(ConfigError, match="launch.rdzv_endpoint="):
        rdzv_address(endpoint)
    with pytest.raises(ConfigError, match="launch.rdzv_endpoint="):
        load_config([], ["launch.nnodes=2", f"launch.rdzv_endpoint={endpoint}"])


TEXT = [
    "${HOME}",
    "${oc.env:USER}",
    "${oc.env:NO_SUCH_VARIABLE_PTUNE}",
    "${nothing.here}",
    "x ${",
    "a\\${b}",
    "\\${c}\\",
    "${{x}}",
    "$${y}",
    "???",
    "${tasks.0.name}",
]


@pytest.mark.parametrize("value", TEXT)
def test_free_text_is_literal_through_overrides_files_and_saved_configs(value, tmp_path, monkeypatch):
    """${...} in a template, label words, labels and method.init_text stays exactly as written: from an
    override, from a YAML file, and through to_yaml -> load_config / from_yaml (eval and predict re-read it)."""
    monkeypatch.setenv("USER", "someone")
    overrides = [
        f"tasks.0.template={value} {{text}}{{answer}}",
        f"method.init_text={value}",
        f"tasks.0.labels=['{value}', b]",
        f"tasks.0.verbalizer={{a: [' {value}'], b: [' b']}}",
    ]
    by_override = load_config([], overrides)
    t = by_override.tasks[0]
    assert t.template == f"{value} {{text}}{{answer}}" and by_override.method.init_text == value
    assert t.labels == [value, "b"] and t.verbalizer == {"a": [f" {value}"], "b": [" b"]}
    f = tmp_path / "t.yaml"
    f.write_text(
        yaml_dump(
            {
                "method": {"init_text": value},
                "tasks": [{"name": "default", "template": t.template, "labels": t.labels, "verbalizer": t.verbalizer}],
            }
        )
    )
    assert load_config([f]) == by_override
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(by_override))
    assert load_config([saved]) == by_override and from_yaml(to_yaml(by_override)) == by_override
    assert load_config([saved], ["tasks.0.name=other"]).tasks[0].template == t.template


def yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def test_interpolation_still_works_in_other_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("PTUNE_TEST_RUNS", str(tmp_path))
    cfg = load_config([], ["output_dir=${oc.env:PTUNE_TEST_RUNS}/${method.name}", "tasks.0.template=${method.name}"])
    assert cfg.output_dir == f"{tmp_path}/prompt_tuning" and cfg.tasks[0].template == "${method.name}"
    f = tmp_path / "a.yaml"
    f.write_text("train:\n  steps: 7\n  warmup_steps: ${train.steps}\ntasks:\n  - template: '${train.steps}'\n")
    cfg = load_config([f])
    assert cfg.train.warmup_steps == 7 and cfg.tasks[0].template == "${train.steps}"


def test_errors_show_free_text_as_written():
    with pytest.raises(ConfigError) as e:
        load_config([], ["tasks.0.verbalizer={a: '${HOME}'}"])
    assert "ptune-literal" not in str(e.value) and "\ue000" not in str(e.value)


# --- YAML files keep text as written; shapes, override keys and values are checked before anything runs ---

CONFIGS = Path(__file__).parents[1] / "configs"
SHIPPED = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("**/*.yaml"))


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("launch: {time: 90:00}", "launch.time", "90:00"),  # YAML 1.1: base 60, 5400 (Slurm: 90 hours)
        ("launch: {job_name: 0x10}", "launch.job_name", "0x10"),
        ("launch: {python: 010}", "launch.python", "010"),
        ("launch: {partition: 1e3}", "launch.partition", "1e3"),
        ("tasks: [{name: 007}]", "tasks.0.name", "007"),
        ("model: {name_or_path: 1.10}", "model.name_or_path", "1.10"),
        ("output_dir: 1_000", "output_dir", "1_000"),
        ("launch: {account: no, qos: on}", "launch.account", "no"),
        ("tasks: [{labels: [yes, no, 1.0, 'null']}]", "tasks.0.labels", ["yes", "no", "1.0", "null"]),
        (
            "tasks: [{verbalizer: {yes: [' y'], no: [' n'], 1: [' 1']}}]",
            "tasks.0.verbalizer",
            {"yes": [" y"], "no": [" n"], "1": [" 1"]},
        ),
        ("sweep: {grid: {train.lr: [1e-3, 0.10]}}", "sweep.grid", {"train.lr": ["1e-3", "0.10"]}),
    ],
)
def test_yaml_text_is_kept_as_written(text, key, value, tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(text + "\n")
    for cfg in (load_config([f]), from_yaml(f.read_text())):
        got = cfg
        for part in key.split("."):
            got = got[int(part)] if part.isdigit() else getattr(got, part)
        assert got == value


def test_yaml_text_converts_to_each_fields_type(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(
        "train: {steps: 7, lr: 1e-3, betas: [0.8, .99], tensorboard: no, progress_bar: off,\n"
        "        eval_at_start: yes, eval_baseline: true}\n"
        "model: {dropout: ~, gradient_checkpointing: 1}\nmethod: {name: prefix_tuning, projection: null}\n"
        "distributed: {engine: deepspeed, zero_stage: 3, zero_extra: {stage3_max_live_parameters: 1e6,\n"
        "  stage3_prefetch_bucket_size: 0, sub: {buffer_count: 5, device: cpu, pin: yes}}}\n"
    )
    cfg = load_config([f])
    t = cfg.train
    assert (t.steps, t.lr, t.betas) == (7, 0.001, [0.8, 0.99]) and type(t.steps) is int and type(t.lr) is float
    assert (t.tensorboard, t.progress_bar, t.eval_at_start, t.eval_baseline) == (False, False, True, True)
    assert cfg.model.dropout is None and cfg.model.gradient_checkpointing is True and cfg.method.projection is None
    # settings passed on to DeepSpeed take YAML's own types, nested ones too
    assert cfg.distributed.zero_extra == {
        "stage3_max_live_parameters": 1e6,
        "stage3_prefetch_bucket_size": 0,
        "sub": {"buffer_count": 5, "device": "cpu", "pin": True},
    }
    assert from_yaml(to_yaml(cfg)) == cfg and load_config(
        [], ["distributed.engine=deepspeed", "distributed.zero_extra={sub: {buffer_count: 5}}"]
    ).distributed.zero_extra == {"sub": {"buffer_count": 5}}
    f.write_text("train:\n  steps: 1\n  steps: 2\n")
    with pytest.raises(ConfigError, match="duplicate key steps"):
        load_config([f])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_read_back_the_same(name, tmp_path):
    cfg = load_config([CONFIGS / name])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert from_yaml(saved.read_text()) == cfg and load_config([saved]) == cfg


def test_shipped_numbers_keep_their_types():
    cfg = load_config([CONFIGS / "quickstart.yaml", CONFIGS / "methods" / "full_finetune.yaml"])
    t = cfg.train
    assert (t.lr, t.steps, t.eval_baseline, t.max_grad_norm, cfg.method.name) == (2e-05, 60, True, 1.0, "full_finetune")
    assert type(t.lr) is float and type(t.steps) is int and type(t.max_grad_norm) is float


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {steps: abc}", "config key train.steps: Value 'abc'"),
        ("launch: {time: [1]}", "launch.time must be text, found a list ['1']"),
        ("train: 5", "train must be a mapping of train.* keys, found 5"),
        ("train:", "train cannot be null"),
        ("tasks: {name: x}", "tasks must be a list of mappings, one per item (tasks.N.* keys), found a mapping"),
        ("tasks: [{name: a}, 3]", "tasks.1 must be a mapping of tasks.1.* keys, found 3"),
        ("tasks: [{labels: a}]", "tasks.0.labels must be a list of text values, found a"),
        ("tasks: [{verbalizer: {a: b}}]", "tasks.0.verbalizer.a must be a list of text values, found b"),
        ("tasks: [{verbalizer: [a]}]", "tasks.0.verbalizer must be a mapping of names to lists of text values"),
        ("launch: {setup: [a: b]}", "launch.setup.0 must be text, found a mapping {'a': 'b'} (quote it"),
        ("distributed: {zero_extra: 5}", "distributed.zero_extra must be a mapping, found 5"),
        ("train: {steps: {a: 1}}", "train.steps must be a whole number, found a mapping"),
        ("launch: {partition: }", "launch.partition cannot be null"),
    ],
)
def test_yaml_errors_name_the_key_and_the_file(text, message, tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config([f])
    assert message in str(e.value) and str(f) in str(e.value), str(e.value)


def test_a_folder_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path}: is a folder, not a YAML file"):
        load_config([tmp_path])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["=x"], "override '=x': the key before '=' is empty"),
        (["="], "override '=': the key before '=' is empty"),
        ([".=x"], "override '.=x': the key before '=' is empty"),
        (["train..steps=1"], "override 'train..steps=1': the key 'train..steps' has an empty part"),
        (
            ["tasks.5.name=x"],
            "tasks.5: the config has 1 task (tasks.0); tasks are added in a YAML file or with tasks=[",
        ),
        (["tasks.1.name=x"], "tasks.1: the config has 1 task (tasks.0)"),
        (["tasks[1].template=x"], "tasks.1: the config has 1 task (tasks.0)"),
        (["tasks.-1.name=x"], "tasks.-1: the config has 1 task (tasks.0)"),
        (["tasks=[{name: a}, {name: b}]", "tasks.2.name=c"], "tasks.2: the config has 2 tasks (tasks.0, tasks.1)"),
        (["train.betas.2=0.5"], "train.betas.2: train.betas has 2 items (train.betas.0, train.betas.1); set the whole"),
        (["train.steps.x=1"], "train.steps.x: train.steps is a single value"),
        (["train=5"], "train must be a mapping of train.* keys, found 5"),
        (["tasks={name: x}"], "tasks must be a list of mappings"),
        (["tasks.0=5"], "tasks.0 must be a mapping of tasks.0.* keys, found 5"),
        (["launch.setup=[a: b]"], "launch.setup.0 must be text, found a mapping {'a': 'b'}"),
        (["launch.sbatch_extra=[{x: 1}]"], "launch.sbatch_extra.0 must be text, found a mapping"),
        (["launch.sbatch_extra=[[--a]]"], "launch.sbatch_extra.0 must be text, found a list ['--a']"),
        (["tasks.0.labels=[a, [b]]"], "tasks.0.labels.1 must be text"),
        (["sweep.grid={train.lr: [{a: 1}]}"], "sweep.grid.train.lr.0 must be text"),
    ],
)
def test_override_keys_and_shapes(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config([], overrides)
    assert str(e.value).startswith(message), str(e.value)


def test_override_indexes_that_exist():
    cfg = load_config(
        [], ["tasks=[{name: a}, {name: b}]", "tasks.1.preset=support", "tasks[0].name=x", "train.betas.1=0.5"]
    )
    assert [t.name for t in cfg.tasks] == ["x", "b"] and cfg.tasks[1].preset == "support"
    assert cfg.train.betas == [0.9, 0.5]


@pytest.mark.parametrize(
    "field, value, key",
    [
        ("setup", [{"a": "b"}], "launch.setup.0"),
        ("sbatch_extra", ["--x", ["--a"]], "launch.sbatch_extra.1"),
        ("job_name", {"a": 1}, "launch.job_name"),
    ],
)
def test_validate_checks_text_leaves(field, value, key):
    """A config built in code (not through load_config) is held to the same: text where text is declared."""
    cfg = RunConfig()
    setattr(cfg.launch, field, value)
    with pytest.raises(ConfigError, match=rf"^{key} must be text"):
        validate(cfg)
    cfg = RunConfig()
    cfg.tasks[0].verbalizer = {"a": [" a", 3]}
    with pytest.raises(ConfigError, match=r"^tasks.0.verbalizer.a.1 must be text"):
        validate(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tasks.0.verbalizer={a: [], b: [' no']}"], "tasks.0.verbalizer.a: no label words"),
        (["tasks.0.verbalizer={a: [' a', ''], b: [' no']}"], "tasks.0.verbalizer.a.1: an empty label word"),
        (["train.threads=1099511627776"], "train.threads=1099511627776 must be <= 65536 ("),
        (["train.threads=65537"], "train.threads=65537 must be <= 65536"),
        (["launch.threads_per_proc=70000"], "launch.threads_per_proc=70000 must be <= 65536"),
        (["launch.cpus_per_task=70000"], "launch.cpus_per_task=70000 must be <= 65536"),
        (["distributed.timeout_s=" + str(10**30)], f"distributed.timeout_s={10**30} must be <= 2592000 (30 days"),
        (["launch.nproc_per_node=1025"], "launch.nproc_per_node=1025 must be <= 1024"),
        (["launch.nnodes=100001"], "launch.nnodes=100001 must be <= 100000"),
        (["train.steps=2147483648"], "train.steps=2147483648 must be <= 2147483647 (2**31-1"),
        (["train.save_every=2147483648"], "train.save_every=2147483648 must be <= 2147483647"),
        (["train.eval_every=2147483648"], "train.eval_every=2147483648 must be <= 2147483647"),
        (["train.log_every=2147483648"], "train.log_every=2147483648 must be <= 2147483647"),
        (["train.keep_checkpoints=2147483648"], "train.keep_checkpoints=2147483648 must be <= 2147483647"),
        (["data.max_train_examples=2147483648"], "data.max_train_examples=2147483648 must be <= 2147483647"),
        (["train.resume=Never"], "train.resume='Never': no such folder (did you mean never?); choose auto"),
        (["train.resume="], "train.resume is empty; choose auto"),
        (["train.resume=no/such/checkpoint"], "train.resume='no/such/checkpoint': no such folder; choose auto"),
    ],
)
def test_values_that_cannot_work(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config([], overrides)
    assert str(e.value).startswith(message), str(e.value)


def test_limits_themselves_are_allowed(tmp_path):
    cfg = load_config(
        [],
        [
            "train.threads=65536",
            "distributed.timeout_s=2592000",
            "launch.nproc_per_node=1024",
            "train.steps=2147483647",
            "train.warmup_steps=2147483647",
            "train.steps=0",
            "train.warmup_steps=5",
            "train.resume=never",
            f"train.resume={tmp_path}",
        ],
    )
    assert cfg.train.resume == str(tmp_path) and cfg.train.warmup_steps == 5
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="train.resume='.*file': not a folder; choose auto"):
        load_config([], [f"train.resume={tmp_path / 'file'}"])


def test_a_runs_saved_config_may_name_a_checkpoint_pruned_since(tmp_path):
    """eval / predict / export read a checkpoint's config.yaml back; the checkpoint that run resumed from
    may be gone by then, which is no reason to refuse it."""
    folder = tmp_path / "run" / "final"
    folder.mkdir(parents=True)
    cfg = load_config([], [f"train.resume={tmp_path}"])
    cfg.train.resume = str(tmp_path / "run" / "checkpoints" / "step-10")
    (folder / "config.yaml").write_text(to_yaml(cfg))
    with pytest.raises(ConfigError, match="train.resume="):
        load_config([folder / "config.yaml"])
    (folder / "manifest.json").write_text("{}")
    assert load_config([folder / "config.yaml"]) == cfg


def test_every_int_key_has_an_upper_end():
    """A count without a natural end says where it stops (schema.number(most=...)): a huge value would
    otherwise fail deep inside torch, Python or Slurm."""
    ints = [(key, f) for key, tp, f in schema_fields(RunConfig) if tp in (int, typing.Optional[int])]
    d = {key: f.metadata["domain"] for key, f in ints}
    assert not [key for key, dom in d.items() if dom.le is None and dom.lt is None and dom.most is None]


def test_the_method_section_is_the_named_methods_own_config(tmp_path):
    """method: resolves by name into that method's Config; a knob only other methods have is refused, naming
    the key and those methods, from an override or a file; an old run's config.yaml (every method's keys,
    each at its default) still loads."""
    from ptune_dist.methods import METHODS

    cfg = load_config([], ["method.name=p_tuning", "method.encoder=lstm"])
    assert isinstance(cfg.method, METHODS["p_tuning"].Config) and cfg.method.encoder == "lstm"
    assert not hasattr(load_config([], []).method, "encoder")
    with pytest.raises(
        ConfigError,
        match=r"method.encoder=lstm: method.name=prompt_tuning has no key encoder; "
        r"it is a key of p_tuning",
    ):
        load_config([], ["method.name=prompt_tuning", "method.encoder=lstm"])
    f = tmp_path / "a.yaml"
    f.write_text("method: {projection: true}\n")
    with pytest.raises(ConfigError, match=r"method.projection=.*prefix_tuning, p_tuning_v2 \(config file"):
        load_config([f])
    assert load_config([f], ["method.name=prefix_tuning"]).method.projection is True  # the name may come later
    with pytest.raises(ConfigError, match="config key method.encodr is unknown; allowed here: name, "):
        load_config([], ["method.name=p_tuning", "method.encodr=lstm"])
    old = (
        "method:\n  name: prompt_tuning\n  num_virtual_tokens: 7\n  init: random\n  init_text: ''\n"
        "  init_scale: 0.5\n  encoder: mlp\n  encoder_hidden_size: 0\n  projection: null\n"
        "  projection_hidden_size: 512\n"
    )
    saved = tmp_path / "config.yaml"
    saved.write_text(old)
    assert (
        load_config([saved]).method == from_yaml(old).method == METHODS["prompt_tuning"].section(num_virtual_tokens=7)
    )
    assert from_yaml(to_yaml(cfg)) == cfg and "projection" not in to_yaml(cfg)
