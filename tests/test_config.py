"""Config loading: YAML + overrides onto the schema; every error names the key and what is allowed."""

import pytest

from ptune_dist.config import load_config, to_yaml, from_yaml
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


@pytest.mark.parametrize("override, words", [
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
])
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


@pytest.mark.parametrize("overrides, match", [
    (["distributed.zero_stage=3"], "need distributed.engine=deepspeed"),
    (["distributed.engine=deepspeed", "distributed.zero_stage=4"], "zero_stage=4 is not one of"),
    (["distributed.engine=deepspeed", "distributed.offload_optimizer=true"], "offload_optimizer needs"),
    (["distributed.engine=deepspeed", "distributed.zero_stage=2", "distributed.offload_params=true"], "offload_params needs"),
    (["distributed.engine=deepspeed", "distributed.zero_extra={stage: 3}"], r"zero_extra.stage: set distributed.zero_stage"),
    (["distributed.engine=deepspeed", "distributed.zero_extra={offload_param: {device: cpu}}"], "distributed.offload_params"),
    (["distributed.engine=deepspeed", "train.optimizer=adafactor"], "train.optimizer=adafactor"),
])
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
    cfg = load_config([], ["tasks.0.template=Q #1: {text}{answer}", "tasks.0.labels=[yes, no]", "method.init_text=no",
                           "tasks.0.name=1e3", "tasks.0.verbalizer={yes: [' yes'], no: [' no']}", "model.dropout=null",
                           "train.steps=5", "train.betas=[0.8, 0.99]", "train.tensorboard=false", "output_dir="])
    t = cfg.tasks[0]
    assert t.template == "Q #1: {text}{answer}" and t.labels == ["yes", "no"] and t.name == "1e3"
    assert cfg.method.init_text == "no" and t.verbalizer == {"yes": [" yes"], "no": [" no"]}
    assert cfg.model.dropout is None and cfg.train.steps == 5 and cfg.train.betas == [0.8, 0.99]
    assert cfg.train.tensorboard is False and cfg.output_dir == ""
    cfg = load_config([], ["tasks=[{name: a, labels: [true, false]}, {name: b}]"])
    assert cfg.tasks[0].labels == ["true", "false"] and cfg.tasks[1].name == "b"
