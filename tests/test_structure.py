"""The project's structure (docs/design.md): no import cycles inside the package, nothing imports
the training script, and the benchmarks use the public library only (no private names, no
patching of internals). Read from the sources' syntax trees, nothing is imported."""
import ast
import os

import pytest

from helpers import BENCHMARKS

REPO = os.path.dirname(BENCHMARKS)
PACKAGE = os.path.join(REPO, "fastnofrost")
TRAIN_SCRIPT = "fastnofrost.train"


def package_modules() -> dict:
    """{dotted name: path} of every module of the package (a package is its __init__)."""
    modules = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
                name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
                modules[name] = os.path.join(root, f)
    return modules


MODULES = package_modules()


def imports(path: str, name: str, top_level_only: bool):
    """(imported module, imported names) of a file; relative imports resolved against ``name``
    (the module's dotted name; for a file outside the package, its own stem)."""
    tree = ast.parse(open(path).read(), path)
    is_package = path.endswith("__init__.py")
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # top-level statements, including those inside top-level if / try blocks
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield module, tuple(a.name for a in node.names)


def edges(name: str, path: str):
    """The package modules ``name`` imports at import time (a ``from P import m`` of a
    submodule m counts as an import of P.m)."""
    out = set()
    for module, names in imports(path, name, top_level_only=True):
        if not module.startswith("fastnofrost"):
            continue
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        out.update(subs if subs and len(subs) == len(names) else [module] + subs)
    return {m for m in out if m in MODULES and m != name}


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_the_package():
    graph = {name: edges(name, path) for name, path in MODULES.items()}
    # the parent-package imports Python does implicitly are not edges: a package that imports
    # its own submodules and a submodule that imports a sibling are the normal layering
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert cycles(graph) == []


# docs/design.md's layers: a module imports only from its own layer and those above (lower numbers)
LAYERS = {"ops": 2, "nn": 3, "models": 4, "attacks": 5, "metrics": 5.5, "methods": 6, "data": 6.5, "config": 6.5,
          "distributed": 6.5, "device": 6.5, "training": 7, "evaluation": 7, "train": 7, "evaluate": 7}


def layer(module: str):
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None  # the package root re-exports: no layer


def test_each_layer_imports_only_from_the_layers_above():
    unknown = {name.split(".")[1] for name in MODULES if "." in name} - set(LAYERS)
    assert unknown == set(), "a new top-level module: give it a layer here and in docs/design.md"
    upward = [(name, m) for name, path in MODULES.items() for m in edges(name, path)
              if layer(name) is not None and layer(m) is not None and layer(m) > layer(name)]
    assert upward == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def python_files(*folders):
    for folder in folders:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(root, f)


def dotted(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def test_nothing_imports_the_training_script():
    offenders = []
    for path in python_files("fastnofrost", "benchmarks", "tests"):
        text = open(path).read()
        for module, names in imports(path, dotted(path), top_level_only=False):
            if module == TRAIN_SCRIPT or (module == "fastnofrost" and "train" in names):
                offenders.append(os.path.relpath(path, REPO))
        if f'import_module("{TRAIN_SCRIPT}")' in text or f"import_module('{TRAIN_SCRIPT}')" in text:
            offenders.append(os.path.relpath(path, REPO))
    assert offenders == []


@pytest.mark.parametrize("path", sorted(python_files("benchmarks")), ids=os.path.basename)
def test_benchmarks_use_the_public_library_only(path):
    """No private module or name of fastnofrost, no mock.patch, no importlib back doors."""
    private = []
    for module, names in imports(path, dotted(path), top_level_only=False):
        if module.startswith("fastnofrost"):
            parts = module.split(".")[1:] + list(names)
            private += [f"{module}:{p}" for p in parts if p.startswith("_")]
    text = open(path).read()
    assert private == []
    assert "mock.patch" not in text and "import_module(" not in text
