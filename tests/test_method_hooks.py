"""Each method owns everything about itself (ptune_dist/methods, one file each, one registry line).

No code outside ptune_dist/methods names a method: config validation, the PEFT format and the memory
planner ask the method's class (its hooks). And the hooks agree with the modules the methods build:
the planner's parameter count is the module's, for every method and option; an exported prompt has
the shape its import builds. No model loads: the base is a small hand-written BaseInfo.
"""

import dataclasses
import itertools
import re
from pathlib import Path

import pytest
import torch

from ptune_dist.errors import ConfigError
from ptune_dist.methods import (
    DEFAULT_METHOD,
    METHODS,
    REGISTERED,
    BaseInfo,
    InitContext,
    for_peft_type,
    peft_exportable,
    peft_importable,
)
from ptune_dist.methods.placement import Placement
from ptune_dist.plan import Arch, Setup, trainable_params
from ptune_dist.plan.memory import method_section

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    ROOT / "ptune_dist",
    ROOT / "kernels",
    ROOT / "launcher",
    ROOT / "slurm",
]  # ptune_dist and its mapped folders
METHODS_DIR = ROOT / "ptune_dist" / "methods"

ARCH = Arch(
    name="tiny",
    model_type="llama",
    num_layers=3,
    hidden_size=24,
    intermediate_size=40,
    num_heads=4,
    num_kv_heads=2,
    head_dim=6,
    vocab_size=50,
    tied_embeddings=True,
)
INFO = BaseInfo(
    kind="causal_lm",
    model_type="llama",
    hidden_size=24,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=6,
    vocab_size=50,
    max_positions=0,
)

OPTIONS = [
    dict(encoder=enc, encoder_hidden_size=eh, projection=proj, projection_hidden_size=ph)
    for enc, eh, proj, ph in itertools.product(("mlp", "lstm"), (0, 10), (None, True, False), (16,))
]
CASES = [(name, opts) for name in METHODS for opts in OPTIONS]


def source_files():
    for root in SOURCES:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and METHODS_DIR not in path.parents:
                yield path


def build(name: str, **fields):
    cls = METHODS[name]
    own = {f.name for f in dataclasses.fields(cls.Config)}  # each method's section holds its own knobs only
    m = cls.section(num_virtual_tokens=5, init="random", **{k: v for k, v in fields.items() if k in own})
    ctx = InitContext(embed=None, tokenizer=None, label_words=[], generator=torch.Generator().manual_seed(0))
    return m, METHODS[name](m, INFO, ctx)


def test_no_method_is_named_outside_the_methods_package():
    assert {"prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "full_finetune", "prompt_design"} <= set(
        METHODS
    )
    files = list(source_files())
    assert any(p.name == "validate.py" for p in files) and any(p.parent.name == "kernels" for p in files)
    found = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {name}" for name in METHODS if name in line]
    assert not found, "method names outside ptune_dist/methods (ask the method's class instead):\n" + "\n".join(found)


DEPTH_TEST = re.compile(
    r"""(==|!=|\bin)\s*\(?\s*["'](shallow|deep)["']|["'](shallow|deep)["']\s*(==|!=)"""
    r"""|(depth|placement)\w*(\.name)?\s*(==|!=)\s*["']none["']"""
)


def test_no_depth_string_is_tested_outside_the_methods_package():
    """How a prompt enters the model is its Placement's to say (methods/placement.py): no module outside
    methods/ compares a placement's name with "shallow", "deep" or "none"."""
    assert DEPTH_TEST.search('if depth == "deep":') and DEPTH_TEST.search("x in ('shallow', 'deep')")
    assert DEPTH_TEST.search('cls.depth != "none"') and not DEPTH_TEST.search('s.quant == "none"')
    found = []
    for path in source_files():
        if path.suffix != ".py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if DEPTH_TEST.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "depth strings tested outside ptune_dist/methods (ask the Placement):\n" + "\n".join(found)


def test_the_registry_is_consistent():
    assert DEFAULT_METHOD in METHODS and len(METHODS) == len(REGISTERED)
    for name, cls in METHODS.items():
        assert cls.name == name and isinstance(cls.placement, Placement)
        assert not (cls.trains_base and cls.placement.learned)
    for peft_type in peft_importable():
        assert sum(peft_type in cls.peft_imports for cls in REGISTERED) == 1, peft_type
    assert for_peft_type("LORA") is None
    assert set(peft_exportable()) == {name for name, cls in METHODS.items() if cls.peft_type}


@pytest.mark.parametrize("name, opts", CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CASES])
def test_planned_parameters_equal_the_built_module(name, opts):
    m, module = build(name, **opts)
    METHODS[name].check_config(m)  # a valid method section: init=random fits every method
    built = sum(p.numel() for p in module.parameters())
    base = ARCH.total_params if METHODS[name].trains_base else 0  # the base's weights train along
    hook = METHODS[name].trainable_params(m, INFO.hidden_size, INFO.kv_width, ARCH.total_params)
    assert hook == built + base
    setup = Setup(method=m)
    assert trainable_params(ARCH, setup) == built + base
    assert method_section(setup) is m and Setup(method=name).method == METHODS[name].section()
    assert METHODS[name].activation_bytes(m, INFO.hidden_size, INFO.kv_width) >= 0


@pytest.mark.parametrize("name", peft_exportable())
@pytest.mark.parametrize("projection", [None, True, False])
def test_an_export_has_the_shape_its_import_builds(name, projection):
    cls = METHODS[name]
    m, module = build(name, projection=projection, projection_hidden_size=16)
    with torch.no_grad():
        weights = module.peft_weights()
    common = dict(
        task_type="CAUSAL_LM",
        num_virtual_tokens=5,
        num_transformer_submodules=1,
        num_layers=INFO.num_layers,
        base_model_name_or_path="tiny",
        inference_mode=True,
    )
    assert cls.peft_config(m, INFO, common).peft_type.value == cls.peft_type
    back = for_peft_type(cls.peft_type)
    imported = back.section(m, **import_lines(back))
    back.check_peft_import(imported, cls.peft_type)
    ((_, param),) = build(back.name, **import_lines(back))[1].named_parameters()
    assert tuple(param.shape) == tuple(weights.shape)


def import_lines(cls) -> dict:
    """The method fields an import of `cls` sets (its peft_import_overrides), as values."""
    lines = dict(line.removeprefix("method.").split("=", 1) for line in cls.peft_import_overrides)
    return {k: {"false": False, "true": True}.get(v, v) for k, v in lines.items()}


@pytest.mark.parametrize("peft_type", peft_importable())
def test_an_import_refuses_a_method_section_that_cannot_hold_the_adapter(peft_type):
    cls = for_peft_type(peft_type)
    cls.check_peft_import(cls.section(**import_lines(cls)), peft_type)
    other = next(n for n in METHODS if n != cls.name)
    sets = "".join(f" with {line}" for line in cls.peft_import_overrides)
    with pytest.raises(ConfigError, match=f"imports as method.name={cls.name}{sets}; drop the method"):
        cls.check_peft_import(METHODS[other].section(), peft_type)
    flipped = {k: not v for k, v in import_lines(cls).items() if isinstance(v, bool)}
    if flipped:  # the name alone is not enough: the section must keep what the import set
        with pytest.raises(ConfigError, match=f"imports as method.name={cls.name}"):
            cls.check_peft_import(cls.section(**flipped), peft_type)
