"""Each study cell's resources from the planner (ptune_dist/study/resources.py): the smallest world that fits an
unquantised base without offload, else the smallest that fits at all; study.global_batch shared out over the
world; the user's keys kept; clear errors; one Slurm array per planned shape; no planning without gpu_mem.
Only config.json files and built-in descriptions are read, no model loads."""

import re

import pytest

from conftest import SMOL
from ptune_dist.errors import ConfigError
from ptune_dist.launcher.grid_arrays import scripts
from ptune_dist.study.cell_configs import resolve_study as prepare

HUB_70B = "meta-llama/Llama-3.1-70B"
CLUSTER = ["study.hardware.gpus_per_node=8", "study.hardware.gpu_mem=80GB", "study.hardware.max_nodes=2"]
# one prompt cell (main, length and init in one) and one model-tuning cell per model
GRID = [
    "study.methods=[prompt_tuning, full_finetune]",
    "study.seeds=[0]",
    "study.prompt_length=20",
    "study.prompt_lengths=[20]",
    "study.init=random",
    "study.inits=[random]",
    "data.max_length=256",
    "launch.backend=slurm",
    "tasks=[{name: support, preset: support}]",
]  # a task every cell can run


def study(tmp_path, models, *overrides):
    """(the study's config, folder, cells, configs), nothing written; each cell's by (model, trains the base)."""
    from ptune_dist.methods import method_class

    cfg, folder, cells, configs = prepare(
        [], [f"study.models=[{', '.join(models)}]", *GRID, *overrides, f"output_dir={tmp_path / 'study'}"], write=False
    )
    by = {(c["model"], method_class(c["method"]).trains_base): (c, k) for c, k in zip(cells, configs)}
    return cfg, folder, cells, configs, by


def world(k) -> int:
    return k.launch.nproc_per_node * k.launch.nnodes


@pytest.mark.parametrize("model", ["llama-3.2-1b", "meta-llama/Llama-3.2-1B", SMOL])
def test_a_small_prompt_cell_gets_one_gpu_in_bf16(tmp_path, model):
    *_, by = study(tmp_path, [model], *CLUSTER)
    cell, k = by[(model, False)]
    assert (k.launch.nproc_per_node, k.launch.nnodes, k.launch.gpus_per_node) == (1, 1, 1)
    assert (k.model.dtype, k.model.quant, k.distributed.engine) == ("bfloat16", "none", "torch")
    assert cell["resources"]["gpus"] == 1 and cell["resources"]["label"].startswith("bf16, ")
    assert cell["resources"]["peak_gb"] <= 80


@pytest.mark.parametrize("model", [HUB_70B, "llama-3.1-70b"])
def test_a_70b_gets_several_gpus_and_what_fits_there(tmp_path, model):
    *_, by = study(tmp_path, [model], *CLUSTER)
    prompt, tuning = by[(model, False)], by[(model, True)]
    for cell, k in (prompt, tuning):
        assert world(k) > 1 and k.launch.gpus_per_node == k.launch.nproc_per_node
        assert (k.model.quant, k.distributed.engine, k.distributed.zero_stage) == ("none", "deepspeed", 3)
        assert not (k.distributed.offload_params or k.distributed.offload_optimizer)
        assert cell["resources"]["gpus"] == world(k) and cell["resources"]["peak_gb"] <= 80
    assert tuning[1].launch.nnodes == 2  # every weight trains: two full nodes
    assert "16 GPUs on 2 nodes" in tuning[0]["resources"]["label"]


def test_with_adafactor_the_70b_prompt_gets_a_quantised_base_not_zero(tmp_path):
    """ZeRO takes AdamW only, and data parallelism keeps the whole bf16 base on each GPU: nothing unquantised
    fits, so the second pass gives the smallest world that fits with a quantised base."""
    *_, by = study(tmp_path, [HUB_70B], *CLUSTER, "study.methods=[prompt_tuning]", "train.optimizer=adafactor")
    cell, k = by[(HUB_70B, False)]
    assert k.distributed.engine == "torch" and k.model.quant in ("int8", "nf4") and world(k) == 1
    assert cell["resources"]["base"] == k.model.quant


def test_the_global_batch_is_shared_out_over_each_cells_world(tmp_path):
    *_, configs, by = study(tmp_path, ["llama-3.2-1b", HUB_70B], *CLUSTER, "study.global_batch=32")
    assert len({world(k) for k in configs}) > 1  # the sizes got different worlds
    for k in configs:
        assert k.data.batch_size * k.train.grad_accum * world(k) == 32
    *_, by = study(tmp_path, [HUB_70B], *CLUSTER, "study.global_batch=12", "study.methods=[full_finetune]")
    cell, k = by[(HUB_70B, True)]  # ZeRO-3 needs 16 GPUs, which do not divide 12: offloaded on fewer
    assert 12 % world(k) == 0 and k.data.batch_size * k.train.grad_accum * world(k) == 12
    assert k.distributed.offload_params and cell["resources"]["engine"] == "ZeRO-3 offload"


def test_a_key_the_user_sets_for_a_cell_wins_and_the_planner_keeps_it(tmp_path):
    *_, by = study(
        tmp_path,
        [HUB_70B],
        *CLUSTER,
        "study.global_batch=32",
        "study.methods=[prompt_tuning]",
        f"study.model_overrides={{'{HUB_70B}': [model.quant=int8, data.batch_size=2]}}",
    )
    cell, k = by[(HUB_70B, False)]
    assert k.model.quant == "int8" and k.distributed.engine == "torch"  # int8 cannot be partitioned by ZeRO-3
    assert k.data.batch_size == 2 and k.data.batch_size * k.train.grad_accum * world(k) == 32
    assert cell["resources"]["base"] == "int8" and cell["resources"]["micro_batch"] == 2
    *_, by = study(
        tmp_path,
        [HUB_70B],
        *CLUSTER,
        "study.methods=[prompt_tuning]",
        f"study.model_overrides={{'{HUB_70B}|prompt_tuning': [launch.nproc_per_node=4, launch.gpus_per_node=4]}}",
    )
    assert world(by[(HUB_70B, False)][1]) == 4  # a world the user sets is the only one tried


def test_nothing_fits_names_the_cell_the_model_and_the_smallest_peak(tmp_path):
    hw = ["study.hardware.gpus_per_node=1", "study.hardware.gpu_mem=1GB", "study.methods=[full_finetune]"]
    with pytest.raises(
        ConfigError,
        match=r"study cell Llama-3\.1-70B__full_finetune__noprompt__\S+: model "
        r"meta-llama/Llama-3\.1-70B fits no setup on study\.hardware .* the "
        r"smallest needs [\d.]+ GB per GPU",
    ):
        study(tmp_path, [HUB_70B], *hw)


@pytest.mark.parametrize(
    "override, message",
    [
        ("study.hardware.gpu_mem=80", "study.hardware.gpu_mem='80': a size needs its unit"),
        ("study.hardware.gpu_mem=lots", "study.hardware.gpu_mem='lots': expected a size"),
        ("study.hardware.gpus_per_node=0", "study.hardware.gpus_per_node=0 must be > 0"),
        ("launch.backend=local", "study.hardware.max_nodes=2 needs launch.backend=slurm"),
    ],
)
def test_a_bad_hardware_section_is_refused_by_its_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        study(tmp_path, ["llama-3.2-1b"], *CLUSTER, override)


def test_a_model_the_planner_cannot_read_offline_is_refused_by_name(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"study\.models: 'some-org/Unknown-7B': the planner cannot read its "
        r"architecture offline .*local HF folder.*built-in name.*leave "
        r"study\.hardware\.gpu_mem unset",
    ):
        study(tmp_path, ["some-org/Unknown-7B"], *CLUSTER)


def test_cells_of_different_planned_worlds_go_into_different_arrays(tmp_path):
    cfg, folder, cells, configs, _ = study(tmp_path, ["llama-3.2-1b", HUB_70B], *CLUSTER)
    arrays = scripts(cfg, folder, cells, configs)
    worlds = {c["id"]: c["resources"]["gpus"] for c in cells}
    assert len(arrays) == len(set(worlds.values())) >= 2
    for _, listing, _, script in arrays:
        ids = {line.split("/cells/")[1].split("/")[0] for line in listing.splitlines()}
        (gpus,) = {worlds[i] for i in ids}  # one planned world per array
        nodes = max(1, gpus // 8)
        assert f"#SBATCH --nodes={nodes}\n" in script and f"#SBATCH --gpus-per-node={gpus // nodes}\n" in script


def test_without_gpu_mem_the_cells_keep_the_configs_resources(tmp_path):
    base = ["launch.nproc_per_node=2", "launch.gpus_per_node=2", "data.batch_size=3"]
    _, _, cells, configs, _ = study(tmp_path, ["llama-3.2-1b", HUB_70B], *base, "study.hardware.gpus_per_node=4")
    assert all("resources" not in c for c in cells)
    assert all(
        (k.launch.nproc_per_node, k.launch.gpus_per_node, k.data.batch_size, k.model.dtype, k.distributed.engine)
        == (2, 2, 3, "float32", "torch")
        for k in configs
    )
    with pytest.raises(ConfigError, match=r"study\.global_batch=32 .* set study\.hardware\.gpu_mem"):
        study(tmp_path, ["llama-3.2-1b"], "study.global_batch=32")


def test_dry_run_shows_each_cells_resources(tmp_path, capsys):
    from ptune_dist.study.command import run

    args = ["study.models=[llama-3.2-1b]", *GRID, *CLUSTER, f"output_dir={tmp_path / 'study'}"]
    assert run(args, dry_run=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(re.search(r"\]  bf16, \d+ x \d+, plain, 1 GPU, [\d.]+ GB$", line) for line in lines)
    assert not (tmp_path / "study").exists()
