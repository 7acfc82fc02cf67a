"""Static checks of ptune_dist's import structure (source read with `ast`; nothing of the package is imported).

The rule behind all of them: each layer imports only layers below it, so a layer can be read, tested and
changed without the ones above it, and no import cycle can make the import order (or a lazy import inside a
function) decide whether the program works. The layers, from the bottom, as the code actually has them:

     1. errors                                    (depends on nothing)
     2. rank_env, device, embedded, runtime, read_back, fields, slurm  (leaf helpers; fields: the config field
                                                  helpers; slurm: the job templates)
     3. methods                                   (the method registry: errors and fields only)
     4. kernels                                   (attention kernels: nothing outside kernels)
     5. config                                    (imports methods and kernels for its choices)
     6. data
     7. model                                     (uses data.task)
     8. checkpoint                                (uses config, methods, model.inspect; never the engine)
     9. train
    10. inference, inference_ensemble             (evaluation/generation on top of train's session; prompt
                                                  ensembles scored on one base)
    11. plan                                      (memory planner; in practice it needs only config)
    12. launcher
    13. study                                     (the power-of-scale study: cells run through the launcher)
    14. cli                                       (the command line entry point, on top of everything)

The graph: one node per module of ptune_dist (the folder ptune_dist/ walked through its symlinks kernels,
launcher and slurm to the top-level folders of those names), one edge per import statement found
anywhere in a module (top level or inside functions: a lazy import is still a dependency). Imports under
`if TYPE_CHECKING:` run only for a type checker; they are kept apart (TYPE_ONLY) and may name only the
config section dataclasses (ptune_dist.config.schema), the vocabulary stages are typed with. Relative
imports are resolved; `from pkg import x` counts pkg.x when that is a module and pkg otherwise; importing a
submodule does not count its package's __init__.

Rules (one test each):
  1. no import cycle between modules (a package __init__ importing a submodule that imports it back is one);
  2. no cycle between the top-level parts ptune_dist.<first component> (root __init__ and edges from cli
     left out);
  3. checkpoint imports nothing from inference, train, launcher, cli;
  4. train imports nothing from launcher, inference, cli; model, methods, data, kernels, config import
     nothing from train, launcher, inference, checkpoint, cli;
  5. methods imports only errors (and itself); kernels imports nothing outside kernels;
  6. no `cfg: object` parameter or field: a config is typed as what it is;
  7. every import between top-level parts goes down (or sideways within a layer) in the order above;
  8. a type-only import names only ptune_dist.config.schema;
  9. no import cycle when type-only imports count too (a ring through `if TYPE_CHECKING:` is still two modules
     that cannot be read apart);
 10. no file of the repository imports the top-level names kernels, launcher or slurm (those folders are
     reached only as ptune_dist.kernels, .launcher, .slurm: one module loaded once, under one name).

A module added to a known part (ptune_dist.plan.request, ptune_dist.data.batch) takes its part's layer; a new
top-level module of ptune_dist must be given a layer in LAYERS.
"""

import ast
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ptune_dist"  # its kernels, launcher and slurm are symlinks to the top-level folders
LINKED = ("kernels", "launcher", "slurm")
LAYERS = [
    {"errors"},
    {"rank_env", "device", "embedded", "runtime", "read_back", "fields", "nofollow", "slurm"},
    {"methods"},
    {"kernels"},
    {"config"},
    {"data"},
    {"model"},
    {"checkpoint"},
    {"train"},
    {"inference", "inference_ensemble"},
    {"plan"},
    {"launcher"},
    {"study"},
    {"cli"},
]


def import_graph():
    """(files, edges, type_only, trees): module name -> path; module -> {imported module: [line numbers]}
    (type_only: the same for imports under `if TYPE_CHECKING:`); module -> ast."""
    files = {}
    for folder, dirs, names in os.walk(PACKAGE, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(n for n in names if n.endswith(".py")):
            path = Path(folder, name)
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    edges, type_only, trees = {}, {}, {}
    for module, path in files.items():
        trees[module] = tree = ast.parse(path.read_text(), filename=str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        checking = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for stmt in node.body
            for n in ast.walk(stmt)
        }
        targets = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [(alias.name, node.lineno, id(node) in checking) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `.` is this module's package, each further dot one package up
                    anchor = package.rsplit(".", node.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append((sub if sub in files else base, node.lineno, id(node) in checking))
        edges[module], type_only[module] = {}, {}
        for target, line, only_types in targets:
            while target and target not in files:  # a name inside a module, or a module not (yet) there
                target = target.rpartition(".")[0]
            if target and target != module:
                (type_only if only_types else edges)[module].setdefault(target, []).append(line)
    return files, edges, type_only, trees


FILES, EDGES, TYPE_ONLY, TREES = import_graph()


def where(module, target):
    """'launcher/slurm.py:41 ptune_dist.launcher.slurm -> ptune_dist.launcher' (all the lines that import it)."""
    lines = ",".join(map(str, sorted(set(EDGES[module][target]))))
    return f"{FILES[module].relative_to(REPO)}:{lines} {module} -> {target}"


def part(module):
    """The top-level part a module belongs to: ptune_dist.train.loop -> ptune_dist.train."""
    return ".".join(module.split(".")[:2])


def cycles(graph):
    """The strongly connected components with more than one node, each as a sorted list."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    found = {frozenset(n for n in reach[m] if m in reach.get(n, ())) | {m} for m in graph}
    return sorted(sorted(c) for c in found if len(c) > 1)


def forbidden(sources, banned, allowed=()):
    """Edges from a module in one of the `sources` parts to a banned part (or to anything not allowed)."""
    bad = []
    for module in sorted(EDGES):
        if part(module) not in sources:
            continue
        for target in sorted(EDGES[module]):
            to = part(target)
            if to in banned or (allowed and to not in allowed and to != part(module)):
                bad.append(where(module, target))
    return bad


def test_graph_covers_the_package():
    # guards the checks below against a builder that silently finds nothing
    for module in (
        "ptune_dist.cli",
        "ptune_dist.train.loop",
        "ptune_dist.kernels.dispatch",
        "ptune_dist.launcher.launch",
        "ptune_dist.slurm.templates",
    ):
        assert module in FILES, module
    assert "ptune_dist.train.dist" in EDGES["ptune_dist.train.loop"]


def test_no_module_import_cycles():
    report = []
    for cycle in cycles(EDGES):
        inside = [where(m, t) for m in cycle for t in sorted(EDGES[m]) if t in cycle]
        report.append("cycle among " + ", ".join(cycle) + "\n    " + "\n    ".join(inside))
    assert not report, "import cycles between modules:\n" + "\n".join(report)


def test_no_cycles_between_top_level_parts():
    parts = {}
    for module, targets in EDGES.items():
        if module == "ptune_dist" or part(module) == "ptune_dist.cli":
            continue
        parts.setdefault(part(module), set()).update(
            part(t) for t in targets if t != "ptune_dist" and part(t) != part(module)
        )
    report = []
    for cycle in cycles(parts):
        inside = [
            where(m, t)
            for m in sorted(EDGES)
            for t in sorted(EDGES[m])
            if part(m) in cycle and part(t) in cycle and part(m) != part(t) and part(m) != "ptune_dist.cli"
        ]
        report.append("cycle among " + ", ".join(cycle) + "\n    " + "\n    ".join(inside))
    assert not report, "import cycles between top-level parts of ptune_dist:\n" + "\n".join(report)


def test_checkpoint_does_not_import_upward():
    banned = {"ptune_dist.inference", "ptune_dist.train", "ptune_dist.launcher", "ptune_dist.cli"}
    bad = forbidden({"ptune_dist.checkpoint"}, banned)
    assert not bad, "ptune_dist.checkpoint imports from a layer above it:\n" + "\n".join(bad)


def test_train_and_lower_layers_do_not_import_upward():
    bad = forbidden({"ptune_dist.train"}, {"ptune_dist.launcher", "ptune_dist.inference", "ptune_dist.cli"})
    lower = {"ptune_dist.model", "ptune_dist.methods", "ptune_dist.data", "ptune_dist.kernels", "ptune_dist.config"}
    above = {"ptune_dist.train", "ptune_dist.launcher", "ptune_dist.inference", "ptune_dist.checkpoint"}
    bad += forbidden(lower, above | {"ptune_dist.cli"})
    assert not bad, "imports from a layer above:\n" + "\n".join(bad)


def test_methods_and_kernels_are_self_contained():
    bad = forbidden({"ptune_dist.methods"}, set(), allowed={"ptune_dist.errors", "ptune_dist.fields"})
    bad += forbidden({"ptune_dist.kernels"}, set(), allowed={"ptune_dist.kernels"})
    assert not bad, (
        "methods may import only ptune_dist.errors and ptune_dist.fields, kernels nothing outside "
        "kernels:\n" + "\n".join(bad)
    )


def test_no_cfg_typed_as_object():
    def is_object(annotation):
        text = ast.unparse(annotation).replace(" ", "").replace("'", "").replace('"', "")
        return text in {"object", "object|None", "None|object", "Optional[object]", "typing.Optional[object]"}

    bad = []
    for module, tree in sorted(TREES.items()):
        for node in ast.walk(tree):
            if isinstance(node, ast.arg):
                name, annotation = node.arg, node.annotation
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name, annotation = node.target.id, node.annotation
            else:
                continue
            if name == "cfg" and annotation is not None and is_object(annotation):
                bad.append(f"{FILES[module].relative_to(REPO)}:{node.lineno} {module}: cfg: {ast.unparse(annotation)}")
    assert not bad, "`cfg` annotated as object (type it as the config class it is):\n" + "\n".join(bad)


def test_imports_follow_the_layer_order():
    rank = {f"ptune_dist.{name}": i for i, layer in enumerate(LAYERS) for name in layer}
    missing = sorted({part(m) for m in FILES if m != "ptune_dist"} - set(rank))
    assert not missing, f"top-level parts of ptune_dist with no layer: give each one in LAYERS: {missing}"
    bad = []
    for module in sorted(EDGES):
        for target in sorted(EDGES[module]):
            if module == "ptune_dist" or target == "ptune_dist":
                continue
            if rank[part(target)] > rank[part(module)]:
                bad.append(where(module, target))
    assert not bad, "imports going up the layer order (see this file's docstring):\n" + "\n".join(bad)


def test_type_only_imports_name_only_the_config_schema():
    bad = [
        f"{FILES[m].relative_to(REPO)}:{','.join(map(str, lines))} {m} -> {t}"
        for m in sorted(TYPE_ONLY)
        for t, lines in sorted(TYPE_ONLY[m].items())
        if t != "ptune_dist.config.schema"
    ]
    assert not bad, "imports under `if TYPE_CHECKING:` other than ptune_dist.config.schema:\n" + "\n".join(bad)


def test_no_import_cycle_counting_type_only_imports():
    graph = {m: set(EDGES[m]) | set(TYPE_ONLY[m]) for m in EDGES}
    report = []
    for cycle in cycles(graph):
        inside = [
            f"{FILES[m].relative_to(REPO)}:{','.join(map(str, sorted(set(lines))))} {m} -> {t}"
            + (" (type only)" if t not in EDGES[m] else "")
            for m in cycle
            for t, lines in sorted({**TYPE_ONLY[m], **EDGES[m]}.items())
            if t in cycle
        ]
        report.append("cycle among " + ", ".join(cycle) + "\n    " + "\n    ".join(inside))
    assert not report, "import cycles, type-only imports counted:\n" + "\n".join(report)


def test_nothing_imports_the_top_level_folders_by_their_own_names():
    bad = []
    for folder in ("ptune_dist", "tests", "bench", "scripts", *LINKED):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                bad += [
                    f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in LINKED
                ]
    assert not bad, (
        "import these as ptune_dist.kernels / .launcher / .slurm (one module, one name; the bare "
        "name is another distribution's package):\n" + "\n".join(bad)
    )
