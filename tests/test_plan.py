"""The memory planner (`ptune plan`): parameter counts against the real modules, the activation model
against what autograd really keeps, the direction of every knob, and the command's output and errors.
No weights load: models are built on the meta device from the real config.json."""

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

from conftest import SMOL
from ptune_dist import embedded
from ptune_dist.cli import main
from ptune_dist.methods import METHODS, BaseInfo, InitContext
from ptune_dist.plan import BUILTIN, Setup, parse_size, predict, resolve_arch, trainable_params
from ptune_dist.plan.memory import activation_bytes, layer_activation_bytes

GiB = 2**30


def smol_config() -> dict:
    return json.loads((embedded.model_dir("smollm2-135m-instruct") / "config.json").read_text())


def meta_model(config_dict: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if not k.startswith("_")})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_parameter_count_of_smollm2_equals_the_real_model():
    arch = resolve_arch(SMOL)
    model = meta_model(smol_config())
    assert arch.total_params == sum(p.numel() for p in model.parameters())  # tied head counted once
    linear = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n
    )
    assert arch.block_linear_params == linear


def test_parameter_count_of_a_builtin_llama_equals_transformers():
    arch = BUILTIN["llama-2-7b"]
    cfg = {
        "model_type": "llama",
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "vocab_size": arch.vocab_size,
        "tie_word_embeddings": False,
    }
    assert arch.total_params == sum(p.numel() for p in meta_model(cfg).parameters())
    assert 6.7e9 < arch.total_params < 6.8e9  # "7B"


@pytest.mark.parametrize(
    "method,extra",
    [
        ("prompt_tuning", {}),
        ("p_tuning", {}),
        ("p_tuning", {"encoder": "lstm", "encoder_hidden_size": 64}),
        ("prefix_tuning", {}),
        ("p_tuning_v2", {}),
        ("prefix_tuning", {"projection": False}),
    ],
)
def test_trainable_parameters_equal_the_method_modules(method, extra):
    from transformers import AutoConfig

    hf = AutoConfig.for_model(**{k: v for k, v in smol_config().items() if not k.startswith("_")})
    info = BaseInfo.from_config(hf, "causal_lm")
    cfg = types.SimpleNamespace(
        num_virtual_tokens=7,
        init="random",
        init_text="",
        init_scale=0.5,
        encoder="mlp",
        encoder_hidden_size=0,
        projection=None,
        projection_hidden_size=96,
    )
    for k, v in extra.items():
        setattr(cfg, k, v)
    ctx = InitContext(embed=None, tokenizer=None, label_words=[], generator=torch.Generator().manual_seed(0))
    module = METHODS[method](cfg, info, ctx)
    own = {f.name for f in dataclasses.fields(METHODS[method].Config)} - {"name"}
    setup = Setup(method=METHODS[method].section(**{k: getattr(cfg, k) for k in own}))
    assert trainable_params(resolve_arch(SMOL), setup) == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "dtype,prefix,checkpointing",
    [("float32", 0, False), ("float32", 6, False), ("bfloat16", 6, False), ("float32", 6, True)],
)
def test_activation_model_matches_what_autograd_keeps(dtype, prefix, checkpointing):
    """A 2-layer SmolLM2-shaped model (real widths, small vocabulary) with ptune's attention and lean
    MLP: the bytes of the tensors autograd saves equal the planner's activation term."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ptune_dist.model.attention import PrefixKV, register
    from ptune_dist.model.lean import apply_lean_mlp

    cfg = {**smol_config(), "num_hidden_layers": 2, "vocab_size": 512}
    hf = AutoConfig.for_model(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    hf._attn_implementation = register()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf).to(getattr(torch, dtype))
    model.requires_grad_(False)
    apply_lean_mlp(model)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    arch = dataclasses.replace(resolve_arch(SMOL), num_layers=2, vocab_size=512)
    B, T = 3, 10
    P = prefix
    leaf = torch.randn(B, T, arch.hidden_size, dtype=getattr(torch, dtype), requires_grad=True)
    embeds = leaf * 1  # not a leaf, as the embedding output of a real run
    kv = torch.randn(2, 2, arch.num_kv_heads, P, arch.head_dim, requires_grad=True) if P else None
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    if kv is not None:
        params.add(kv.untyped_storage().data_ptr())
    params.add(leaf.untyped_storage().data_ptr())
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.nbytes() > 64 * 4:  # skip index/shape scalars
            saved[st.data_ptr()] = st.nbytes()
        return t

    positions = torch.arange(P, P + T).expand(B, -1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.model(
            inputs_embeds=embeds, position_ids=positions, ptune_prefix=PrefixKV(kv, "sdpa")
        ).last_hidden_state
        out.float().sum().backward()
    setup = Setup(
        method=METHODS["prefix_tuning" if P else "prompt_tuning"].section(num_virtual_tokens=P),
        batch_size=B,
        max_length=T + P if P else T,
        dtype=dtype,
        gradient_checkpointing=checkpointing,
    )
    predicted = activation_bytes(arch, setup) - (4 * P * (arch.kv_width + 512) if P and not checkpointing else 0)
    if checkpointing:  # autograd sees the kept inputs; the recomputed block is live only in backward
        predicted -= layer_activation_bytes(arch, setup)
    measured = sum(saved.values())
    assert measured == pytest.approx(predicted, rel=0.02), (measured, predicted)


def test_memory_grows_with_batch_and_checkpointing_shrinks_activations():
    arch = resolve_arch("llama-7b")
    base = Setup(method="prefix_tuning", dtype="bfloat16", max_length=512)
    totals = [predict(arch, dataclasses.replace(base, batch_size=b)).total for b in (1, 2, 4, 8, 16)]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    plain = predict(arch, base)
    ckpt = predict(arch, dataclasses.replace(base, gradient_checkpointing=True))
    assert ckpt.activations < plain.activations / 4
    assert ckpt.frozen_weights == plain.frozen_weights


def test_zero3_divides_the_frozen_weights_by_the_world_size():
    arch = resolve_arch("llama-70b")
    one = predict(arch, Setup(dtype="float32"))
    for world in (2, 8):
        z3 = predict(arch, Setup(dtype="float32", engine="deepspeed", zero_stage=3, world=world))
        assert z3.frozen_weights == pytest.approx(one.frozen_weights / world)
        assert 0 < z3.zero3_gathered < one.frozen_weights  # DeepSpeed's live-parameter limit
    offload = predict(
        arch,
        Setup(dtype="bfloat16", engine="deepspeed", zero_stage=3, world=8, offload_params=True, offload_optimizer=True),
    )
    assert offload.frozen_weights == 0 and offload.host > 0
    # a bf16 base stays bf16 under ZeRO-3 (tests/test_deepspeed.py checks the engine does this)
    bf16 = predict(arch, Setup(dtype="bfloat16", engine="deepspeed", zero_stage=3, world=8))
    assert bf16.frozen_weights == pytest.approx(one.frozen_weights / 16)
    nf4 = predict(
        arch, Setup(dtype="bfloat16", quant="nf4", quant_storage="bfloat16", engine="deepspeed", zero_stage=3, world=8)
    )
    assert nf4.frozen_weights < bf16.frozen_weights / 2


def test_quantised_bases_are_smaller_nf4_int8_bf16_fp32():
    arch = resolve_arch("llama-13b")
    w = {
        q: predict(arch, Setup(dtype=dt, quant=q)).frozen_weights
        for dt, q in [("float32", "none"), ("bfloat16", "none"), ("bfloat16", "int8"), ("bfloat16", "nf4")]
    }
    assert w["nf4"] < w["int8"] < w["none"]
    assert w["none"] == pytest.approx(2 * arch.total_params)
    assert w["int8"] == pytest.approx(arch.block_linear_params + 2 * arch.other_params, rel=0.01)
    double = predict(arch, Setup(dtype="bfloat16", quant="nf4", quant_double=True)).frozen_weights
    assert double < w["nf4"]
    assert w["nf4"] == pytest.approx(arch.block_linear_params * (0.5 + 4 / 64) + 2 * arch.other_params)


def test_loss_only_on_labels_keeps_logits_small():
    arch = resolve_arch("llama-3.1-8b")
    cls = predict(arch, Setup(task="classification", batch_size=4, max_length=1024))
    gen = predict(arch, Setup(task="generation", label_tokens=64, batch_size=4, max_length=1024))
    everything = predict(arch, Setup(task="generation", label_tokens=1024, batch_size=4, max_length=1024))
    assert cls.logits < gen.logits < everything.logits
    assert everything.logits == pytest.approx(64 * cls.logits * 16)


def test_packed_rows_score_every_sequence_and_keep_the_unpacked_view():
    """data.packing: classification scores each packed example (sequences_per_row logit rows a row), and the
    losses' one-sequence-a-row view of the final hidden states (and its gradient) is counted."""
    arch = resolve_arch("llama-3.1-8b")
    plain = Setup(task="classification", batch_size=4, max_length=1024, dtype="bfloat16")
    packed = dataclasses.replace(plain, packing=True, sequences_per_row=6)
    a, b = predict(arch, plain), predict(arch, packed)
    assert b.logits == pytest.approx(6 * a.logits)
    assert b.activations - a.activations == pytest.approx(2 * 4 * 1024 * arch.hidden_size * 2)


def test_sizes_parse_and_bad_sizes_name_the_key():
    assert parse_size("24GB", "k") == 24 * GiB == parse_size("24 GiB", "k") == parse_size("24g", "k")
    assert parse_size("512MB", "k") == 512 * 2**20
    with pytest.raises(ValueError, match="hardware.gpu_mem='24GX'"):
        parse_size("24GX", "hardware.gpu_mem")


def plan_cli(capsys, *args):
    code = main(["plan", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_lists_setups_that_fit_with_their_commands(capsys):
    code, out, _ = plan_cli(
        capsys, "model=llama-7b", "method=prefix_tuning", "hardware.gpus=1", "hardware.gpu_mem=24GB"
    )
    assert code == 0
    assert "llama-2-7b" in out and "setups fit" in out
    assert "ptune train CONFIG.yaml model.name_or_path=meta-llama/Llama-2-7b-hf" in out
    lines = [x for x in out.splitlines() if x.strip().startswith(("1 ", "2 "))]
    assert lines, out
    rows = [x.split() for x in out.splitlines() if x[:4].strip().isdigit()]
    peaks = [float(r[next(i for i, t in enumerate(r) if "+" in t) - 1]) for r in rows]
    assert peaks and max(peaks) <= 24.0
    assert "model.dtype=float32 data.batch_size=8\n" not in out  # fp32 7B does not fit 24 GB without offload


def test_cli_multi_gpu_offers_zero3_with_launch(capsys):
    code, out, _ = plan_cli(
        capsys,
        "model=llama-70b",
        "method=prompt_tuning",
        "hardware.gpus=2",
        "hardware.gpu_mem=24GB",
        "data.max_length=512",
    )
    assert code == 0
    assert "ptune launch CONFIG.yaml launch.nproc_per_node=2" in out and "distributed.zero_stage=3" in out
    assert "model.quant=nf4" in out and "model.quant_storage=bfloat16" in out


def test_cli_reads_a_run_config_and_keeps_given_keys(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{name_or_path: '{SMOL}'}}\nmethod: {{name: p_tuning_v2}}\ndata: {{batch_size: 4}}\n")
    code, out, _ = plan_cli(
        capsys, f"model={cfg}", "hardware.gpu_mem=8GB", "model.dtype=float32", "model.gradient_checkpointing=true"
    )
    assert code == 0
    assert f"ptune train {cfg}" in out and "p_tuning_v2" in out
    rows = [x for x in out.splitlines() if x[:4].strip().isdigit()]
    assert rows and all(" on " in r for r in rows)  # checkpointing stays as given
    assert "bf16" not in out


@pytest.mark.parametrize(
    "args,key",
    [
        (["model=llama-7b", "hardware.gpu_mem=24GX"], "hardware.gpu_mem"),
        (["model=no-such-model", "hardware.gpu_mem=24GB"], "model="),
        (["model=llama-7b", "hardware.gpux=2"], "hardware.gpux"),
        (["model=llama-7b", "hardware.gpus=zero"], "hardware.gpus"),
        (["model=llama-7b", "data.batch_sise=4"], "data.batch_sise"),
        (["model=llama-7b", "method=prefix"], "method.name"),
        (["model=llama-7b", "plan.colour=red"], "plan.colour"),
        (["method=prefix_tuning"], "model="),
    ],
)
def test_cli_errors_name_the_key(capsys, args, key):
    code, out, err = plan_cli(capsys, *args)
    assert code == 2 and key in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["hardware.gpu_mem=24"], "hardware.gpu_mem='24': a size needs its unit, e.g. hardware.gpu_mem=24GB or 24GiB"),
        (["hardware.gpu_mem=0GB"], "hardware.gpu_mem='0GB' must be between 1MiB and 1024TiB"),
        (["hardware.gpu_mem=512KB"], "hardware.gpu_mem='512KB' must be between 1MiB"),
        (["hardware.gpu_mem=2000TB"], "must be between 1MiB and 1024TiB"),
        ([f"hardware.gpu_mem={'9' * 400}TB"], "must be between 1MiB and 1024TiB"),  # not inf
        (["hardware.gpu_mem=24GB", "hardware.runtime=1"], "hardware.runtime='1': a size needs its unit"),
        (["hardware.gpus=" + "9" * 30], f"hardware.gpus={'9' * 30} must be <= 1024"),
        (["hardware.nodes=100000"], "hardware.nodes=100000 must be <= 65536"),
        (["plan.top=0"], "plan.top=0 must be >= 1"),
        (["data.max_length=64", "plan.label_tokens=65"], "plan.label_tokens=65 must be <= 64"),
        (["data.max_length=64", "plan.sequences_per_row=0"], "plan.sequences_per_row=0 must be >= 1"),
    ],
)
def test_hardware_numbers_have_units_and_bounds(args, message, capsys):
    code, out, err = plan_cli(capsys, "model=llama-2-7b", *args)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_nothing_fits_says_what_the_smallest_needs(capsys):
    code, out, _ = plan_cli(capsys, "model=llama-70b", "hardware.gpu_mem=2GB", "hardware.gpus=1")
    assert code == 0 and "nothing fits in 2 GB" in out


def test_cpu_zero3_rows_carry_the_measured_caveat(capsys):
    """The planner's one known miss (allocator memory under ZeRO-3 on CPU) is said next to the rows it concerns."""
    base = [
        "model=embedded:smollm2-135m-instruct",
        "method=prefix_tuning",
        "hardware.gpus=2",
        "hardware.gpu_mem=8GB",
        "distributed.engine=deepspeed",
        "distributed.zero_stage=3",
    ]
    _, cpu, _ = plan_cli(capsys, *base, "hardware.device=cpu")
    _, gpu, _ = plan_cli(capsys, *base)
    assert "ZeRO-3" in cpu and "lower bound" in cpu
    assert "ZeRO-3" in gpu and "lower bound" not in gpu
    _, plain, _ = plan_cli(capsys, *base[:4], "hardware.device=cpu", "distributed.engine=torch")
    assert "lower bound" not in plain


QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")


def rows_and_commands(out: str) -> list[tuple[list[str], list[str]]]:
    """(table row, command) pairs of `ptune plan`'s output."""
    lines = out.splitlines()
    return [(line.split(), lines[i + 1].split()) for i, line in enumerate(lines) if line[:4].strip().isdigit()]


def test_cli_plans_the_run_a_config_file_describes(capsys, tmp_path):
    """`ptune plan CONFIG.yaml`: the file's method, batch, length, quantisation, checkpointing, engine and
    ranks are the run's, kept as set; `model=CONFIG.yaml` only starts from the file and varies them."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {{name_or_path: '{SMOL}', quant: nf4, gradient_checkpointing: true}}\n"
        "method: {name: p_tuning_v2}\ndata: {batch_size: 8, max_length: 128}\n"
        "distributed: {engine: deepspeed, zero_stage: 3}\nlaunch: {nproc_per_node: 2}\n"
    )
    code, out, err = plan_cli(capsys, str(cfg), "hardware.gpu_mem=8GB", "train.grad_accum=2")
    assert code == 0, err
    assert "p_tuning_v2" in out and "batch 8 x 128 tokens per GPU" in out and "hardware: 2 x 8 GB (2 GPUs)" in out
    found = rows_and_commands(out)
    assert found
    for row, command in found:
        assert row[2:7] == ["nf4", "on", "8", "x", "2"] and "ZeRO-3" in row, row
        assert command[:4] == ["ptune", "launch", str(cfg), "launch.nproc_per_node=2"]
        assert "train.grad_accum=2" in command and not any(c.startswith("model.name_or_path") for c in command)
    _, explored, _ = plan_cli(capsys, f"model={cfg}", "hardware.gpu_mem=8GB")
    bases = {row[2] for row, _ in rows_and_commands(explored)}
    assert {"bf16", "nf4"} <= bases and "DDP x2" in explored  # varied: the file is only where it starts


def test_cli_plans_quickstart_with_overrides_and_its_commands_load(capsys):
    """configs/quickstart.yaml plus key=value: the batch and length as overridden; each printed command
    names the config and loads as the setup of its row."""
    from ptune_dist.config import load_config

    code, out, err = plan_cli(
        capsys, QUICKSTART, "data.batch_size=32", "data.max_length=96", "hardware.gpus=1", "hardware.gpu_mem=24GB"
    )
    assert code == 0, err
    assert "smollm2-135m-instruct" in out and "prompt_tuning" in out and "batch 32 x 96 tokens per GPU" in out
    found = rows_and_commands(out)
    assert found
    for row, command in found:
        assert command[1:3] == ["launch" if "ZeRO" in row[7] else "train", QUICKSTART], command
        assert "data.max_length=96" in command
        cfg = load_config([QUICKSTART], command[3:])
        assert cfg.distributed.engine == ("deepspeed" if "ZeRO" in row[7] else "torch")
        micro, accum = int(row[4]), int(row[6])
        assert (cfg.data.batch_size, cfg.train.grad_accum, cfg.data.max_length) == (micro, accum, 96)
        assert micro * accum == 32 and cfg.model.gradient_checkpointing == (row[3] == "on")


def test_cli_hardware_follows_the_config_and_this_machines_gpu(capsys, tmp_path, monkeypatch):
    """GPUs per node and nodes from launch.*, a CPU run from train.device=cpu; without hardware.gpu_mem the
    memory of the smallest GPU this machine shows. A Slurm GPU job's commands keep one GPU per rank."""
    from ptune_dist.config import load_config
    from ptune_dist.launcher import slurm

    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(
        f"output_dir: {tmp_path / 'run'}\nmodel: {{name_or_path: '{SMOL}'}}\n"
        "launch: {backend: slurm, nnodes: 2, nproc_per_node: 2, gpus_per_node: 2}\n"
    )
    memory = {0: 80 * GiB, 1: 40 * GiB}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: types.SimpleNamespace(total_memory=memory[i], name=f"Fake GPU {i}"),
    )
    code, out, err = plan_cli(capsys, str(cfg))
    assert code == 0, err
    assert "hardware: 2 x 40 GB x 2 nodes (4 GPUs; the memory of this machine's Fake GPU 1" in out
    assert (
        "where from: 2 GPU(s) per node from launch.nproc_per_node; 2 node(s) from launch.nnodes; GPU memory 40 GB "
        "detected (this machine's Fake GPU 1, by torch.cuda"
    ) in out
    found = rows_and_commands(out)
    assert found
    for _, command in found:
        assert command[:6] == [
            "ptune",
            "launch",
            str(cfg),
            "launch.nproc_per_node=2",
            "launch.gpus_per_node=2",
            "launch.nnodes=2",
        ]
        slurm.train_script(load_config([str(cfg)], command[3:]), tmp_path / "launch.yaml")  # the launcher accepts it
    _, given, _ = plan_cli(capsys, str(cfg), "hardware.gpu_mem=24GB")
    assert "2 x 24 GB x 2 nodes (4 GPUs)" in given and "Fake GPU" not in given
    assert "GPU memory 24 GB given (hardware.gpu_mem)" in given and "assumed:" not in given
    _, cpu, _ = plan_cli(capsys, str(cfg), "launch.gpus_per_node=0", "train.device=cpu")
    assert "(4 process (CPU)s; 24 GB assumed)" in cpu and "Fake GPU" not in cpu


def test_cli_config_file_errors_name_the_file_or_key(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("data: {batch_sise: 4}\n")
    for args, named in [
        ([str(tmp_path / "missing.yaml")], "missing.yaml"),
        ([str(typo)], "data.batch_sise"),
        (["llama-7b"], "'llama-7b': expected a run config"),
        ([QUICKSTART, f"model={QUICKSTART}"], "model="),
    ]:
        code, _, err = plan_cli(capsys, *args)
        assert code == 2 and named in err and "Traceback" not in err, (args, err)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_int8_kept_inputs_match_a_real_bitsandbytes_model(tmp_path, checkpointing):
    """bitsandbytes' int8 matmul keeps its input on the autograd context, outside saved_tensors_hooks, so
    checkpointing does not free it. A 2-layer SmolLM2-shaped model (random weights) loaded in int8 by
    ptune's loader: the tensors autograd saves plus the new tensors only the contexts hold equal the
    planner's activation term, with checkpointing and without."""
    pytest.importorskip("bitsandbytes")
    import gc
    import warnings

    from torch._subclasses.fake_tensor import is_fake
    from transformers import AutoConfig, AutoModelForCausalLM

    from ptune_dist.config.schema import ModelConfig
    from ptune_dist.model.load import load_base
    from ptune_dist.plan.memory import int8_kept_input_bytes

    cfg = {**smol_config(), "num_hidden_layers": 2, "vocab_size": 512}
    hf = AutoConfig.for_model(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf).save_pretrained(tmp_path)
    model, _ = load_base(ModelConfig(name_or_path=str(tmp_path), quant="int8", gradient_checkpointing=checkpointing))
    model.train()
    held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    held |= {
        m.state.SCB.untyped_storage().data_ptr()
        for m in model.modules()
        if getattr(m, "state", None) and getattr(m.state, "SCB", None) is not None
    }
    B, T = 3, 10
    embeds = torch.randn(B, T, hf.hidden_size, requires_grad=True)
    held.add(embeds.untyped_storage().data_ptr())

    def real_tensor(o) -> bool:
        """A tensor holding memory: not a FakeTensor, nor a dead weak proxy (other tests' torch.compile caches)."""
        try:
            return torch.is_tensor(o) and not is_fake(o)
        except ReferenceError:
            return False

    def tensors() -> dict[int, int]:
        with warnings.catch_warnings():  # a deprecated torch.distributed object warns when type-checked
            warnings.simplefilter("ignore", FutureWarning)
            found = [o.untyped_storage() for o in gc.get_objects() if real_tensor(o)]
        return {s.data_ptr(): s.nbytes() for s in found if s.data_ptr() not in held and s.nbytes() > 256}

    before, saved = tensors(), {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in held and st.nbytes() > 256:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.model(inputs_embeds=embeds * 1).last_hidden_state
    held.add(out.untyped_storage().data_ptr())  # the output itself: no activation
    gc.collect()
    only_contexts = {k: v for k, v in tensors().items() if k not in before and k not in saved}
    measured = sum(saved.values()) + sum(only_contexts.values())
    arch = dataclasses.replace(resolve_arch(SMOL), num_layers=2, vocab_size=512)
    setup = Setup(
        method=METHODS["prompt_tuning"].section(num_virtual_tokens=0),
        batch_size=B,
        max_length=T,
        quant="int8",
        gradient_checkpointing=checkpointing,
    )
    predicted = activation_bytes(arch, setup)
    if checkpointing:  # the recomputed block is live only in the backward pass; its int8 inputs are kept already
        predicted -= layer_activation_bytes(arch, setup) - int8_kept_input_bytes(arch, setup, checkpointed=True)
    assert only_contexts, "bitsandbytes no longer keeps inputs outside saved tensors: update the planner"
    assert measured == pytest.approx(predicted, rel=0.02), (measured, predicted, sum(only_contexts.values()))
    del out


def test_the_planned_kernel_is_the_one_auto_runs_on_each_device():
    """kernels/auto.py: Triton (prefix shared, never copied per row) on a GPU in fp16/bf16, SDPA elsewhere; the
    planner sizes the per-row prefix copy only where SDPA runs."""
    from ptune_dist.plan import parse_request, resolve_arch
    from ptune_dist.plan.memory import Setup, predict
    from ptune_dist.plan.request import planned_kernel

    assert planned_kernel("auto", "bfloat16", "gpu") == "triton" and planned_kernel("auto", "float32", "gpu") == "sdpa"
    assert planned_kernel("auto", "bfloat16", "cpu") == "sdpa" and planned_kernel("split", "bfloat16", "gpu") == "split"
    req = parse_request(["model=llama-3.1-8b", "method=p_tuning_v2", "hardware.gpus=1", "model.dtype=bfloat16"])
    assert req.base.attention == "triton"
    cpu = parse_request(["model=llama-3.1-8b", "method=p_tuning_v2", "hardware.device=cpu", "model.dtype=bfloat16"])
    assert cpu.base.attention == "sdpa"
    arch = resolve_arch("llama-3.1-8b")
    deep = dict(
        method=METHODS["p_tuning_v2"].section(num_virtual_tokens=128), dtype="bfloat16", batch_size=16, max_length=2048
    )
    copied, shared = (predict(arch, Setup(**deep, attention=a)).activations for a in ("sdpa", "triton"))
    assert copied > shared  # the per-row copy of a 128-token prefix is counted only for SDPA


def test_without_a_gpu_the_plan_says_its_gpu_memory_is_assumed(capsys, monkeypatch):
    """issue 21: on a machine without a GPU the 24 GB default is printed as an assumption with the key that
    sets it, never as this machine's GPU; each hardware figure says where it came from."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = plan_cli(capsys, "model=llama-2-7b", "method=prompt_tuning", "hardware.gpus=2")
    assert code == 0, err
    assert "hardware: 2 x 24 GB (2 GPUs; 24 GB assumed)" in out
    assert (
        "where from: 2 GPU(s) per node given (hardware.gpus); 1 node(s) from launch.nnodes; GPU memory 24 GB "
        "assumed: this machine shows no GPU (torch.cuda); give hardware.gpu_mem=..."
    ) in out
    assert "runtime 1.00 GB assumed" in out
    code, out, _ = plan_cli(
        capsys,
        "model=llama-2-70b",
        "method=prompt_tuning",
        "model.quant=none",
        "model.dtype=float32",
        "distributed.engine=torch",
    )
    assert "nothing fits in 24 GB (assumed: hardware.gpu_mem=... sets it)" in out, out
    _, cpu, _ = plan_cli(capsys, "model=llama-2-7b", "method=prompt_tuning", "hardware.device=cpu")
    assert "memory 24 GB assumed (the memory of one process" in cpu and "GPU memory" not in cpu


def test_the_planner_asks_the_kernel_rule_that_auto_runs():
    """One rule (kernels/auto.py rule): what `impl=auto` runs for a call and what the planner counts for a run."""
    from ptune_dist.kernels.auto import choose, choose_packed, rule
    from ptune_dist.plan.request import planned_kernel

    q = torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16)  # a CPU call: sdpa, whatever can run
    assert choose(q) == choose_packed(q) == rule("cpu", torch.bfloat16) == "sdpa"
    everything = lambda name: True  # noqa: E731
    assert rule("cuda", torch.bfloat16, can_run=everything) == rule("cuda", "float16", can_run=everything) == "triton"
    assert rule("cuda", "bfloat16", dropout_p=0.1, can_run=everything) == "flash"
    assert rule("cuda", "bfloat16", packed=True, dropout_p=0.1, can_run=everything) == "sdpa"
    assert rule("cuda", "bfloat16", can_run=lambda name: name == "flash") == "flash"  # e.g. head dim > 256
    assert rule("cuda", "float32", can_run=everything) == "sdpa"
    for dtype in ("bfloat16", "float16", "float32"):
        for device in ("gpu", "cpu"):
            expected = rule("cuda" if device == "gpu" else "cpu", dtype, can_run=lambda name: name == "triton")
            assert planned_kernel("auto", dtype, device) == expected
    assert (
        planned_kernel("reference", "bfloat16", "gpu") == "sdpa"
        and planned_kernel("split", "float32", "cpu") == "split"
    )


@pytest.mark.parametrize("keys", [dict(zero_stage=1, offload_optimizer=True), dict(zero_stage=2, offload_params=True)])
def test_the_offload_rule_is_one_for_the_config_and_the_planner(keys):
    """config/offload.py: config validation and the planner refuse the same offloads with the same words."""
    from ptune_dist.config import load_config
    from ptune_dist.errors import ConfigError

    overrides = ["distributed.engine=deepspeed"] + [f"distributed.{k}={str(v).lower()}" for k, v in keys.items()]
    with pytest.raises(ConfigError) as from_config:
        load_config([QUICKSTART], overrides)
    with pytest.raises(ConfigError) as from_planner:
        predict(BUILTIN["llama-2-7b"], Setup(engine="deepspeed", **keys))
    assert str(from_planner.value) == str(from_config.value) and "needs distributed.engine=deepspeed" in str(
        from_config.value
    )
