"""The package's import graph: no cycles, and the dependency direction of DESIGN.md.

Every module of ``src/ambient_rlhf`` is parsed with ``ast`` (nothing is imported): all
``import`` / ``from ... import`` statements count, at module level, inside functions and
under ``if TYPE_CHECKING``, as does ``importlib.import_module("<literal>")``.  An edge
``a -> b`` means module ``a`` imports project module ``b`` (``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg``).

* no cycle: no strongly connected component of more than one module;
* ``rl/`` and ``data/`` import nothing above them (``models/``, ``train/``, ``eval/``,
  ``run``, ``simulate``, ``cli``), no ``transformers``, and name no such module in a
  string (the dynamic ``importlib`` reach this test replaced);
* ``cli/`` is the only entry and nothing imports it: no module outside ``ambient_rlhf.cli``
  imports ``ambient_rlhf.cli`` or one of its submodules (a library function that wants
  argument parsing is the sign of CLI glue in the wrong place).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import ambient_rlhf

PKG = "ambient_rlhf"
SRC = Path(ambient_rlhf.__file__).parent

# Cycles known to exist, each a sorted tuple of module names: only for work in flight,
# and empty now.  Any cycle not listed, or a listed one that grows, fails.
KNOWN_CYCLES: set[tuple[str, ...]] = set()

LOW_LAYERS = ("data", "rl")  # import nothing above them
ABOVE = ("models", "train", "eval", "run", "simulate", "cli")  # the layers above data/ and rl/
ENTRY = "cli"  # the command layer: imports anything, imported by nothing outside it
FORBIDDEN_THIRD_PARTY = ("transformers",)
MODULE_NAME = re.compile(r"^ambient_rlhf(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def package_modules(src: Path = SRC) -> dict[str, Path]:
    """``{"ambient_rlhf.data.build": path, "ambient_rlhf": .../__init__.py, ...}``."""
    out = {}
    for p in sorted(src.rglob("*.py")):
        parts = [PKG, *p.relative_to(src).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``target`` names (``a.b.func`` -> ``a.b``)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str], set[str]]:
    """(project modules imported, top-level third-party packages imported, project
    modules named in string constants) of module ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    internal: set[str] = set()
    external: set[str] = set()
    named: set[str] = set()

    def add(target: str) -> None:
        if target == PKG or target.startswith(PKG + "."):
            mod = _resolve(target, known)
            if mod and mod != name:
                internal.add(mod)
        else:
            external.add(target.split(".")[0])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == PKG or mod.startswith(PKG + "."):
                for a in node.names:  # `from pkg import sub` imports the module pkg.sub
                    full = f"{mod}.{a.name}"
                    add(full if full in known else mod)
            else:
                add(mod)
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                add(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.match(node.value):
            mod = _resolve(node.value, known)
            if mod and mod != name:
                named.add(mod)
    return internal, external, named


def import_graph(src: Path = SRC):
    known = package_modules(src)
    graph, external, named = {}, {}, {}
    for name, path in known.items():
        graph[name], external[name], named[name] = imports_of(name, path, known)
    return graph, external, named


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module, sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def layer(module: str) -> str:
    """``ambient_rlhf.data.build`` -> ``data``; ``ambient_rlhf`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def direction_violations(graph, external, named) -> list[str]:
    bad = []
    for mod in sorted(graph):
        if layer(mod) not in LOW_LAYERS:
            continue
        for dep in sorted(graph[mod]):
            if layer(dep) in ABOVE:
                bad.append(f"{mod} -> {dep}")
        for dep in sorted(named[mod]):
            if layer(dep) in ABOVE:
                bad.append(f"{mod} -> {dep} (named in a string: a dynamic import)")
        for pkg in sorted(external[mod] & set(FORBIDDEN_THIRD_PARTY)):
            bad.append(f"{mod} -> {pkg}")
    return bad


def entry_violations(graph, named) -> list[str]:
    """Edges into ``cli/`` from modules outside it (imports, and module names in strings)."""
    bad = []
    for mod in sorted(graph):
        if layer(mod) == ENTRY:
            continue
        bad += [f"{mod} -> {dep}" for dep in sorted(graph[mod]) if layer(dep) == ENTRY]
        bad += [f"{mod} -> {dep} (named in a string: a dynamic import)" for dep in sorted(named[mod])
                if layer(dep) == ENTRY]
    return bad


def test_no_import_cycles():
    graph, _, _ = import_graph()
    cycles = strongly_connected(graph)
    new = [c for c in cycles if tuple(c) not in KNOWN_CYCLES]
    report = []
    for comp in new:
        members = set(comp)
        edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in members]
        report.append(" <-> ".join(comp) + "\n    " + "\n    ".join(edges))
    assert not new, "import cycles:\n  " + "\n  ".join(report)


def test_known_cycles_still_exist():
    """A known cycle that is gone must leave KNOWN_CYCLES (so it cannot come back unseen)."""
    graph, _, _ = import_graph()
    cycles = {tuple(c) for c in strongly_connected(graph)}
    gone = sorted(KNOWN_CYCLES - cycles)
    assert not gone, f"resolved, remove from KNOWN_CYCLES: {gone}"


def test_rl_and_data_import_nothing_above_them():
    bad = direction_violations(*import_graph())
    assert not bad, "rl/ and data/ import upward (DESIGN.md dependency direction):\n  " + "\n  ".join(bad)


def test_nothing_outside_cli_imports_it():
    graph, _, named = import_graph()
    bad = entry_violations(graph, named)
    assert not bad, ("library modules import the command layer (DESIGN.md: `cli/` is the only entry and "
                     "nothing imports it; move the argument parsing into cli/<command>.py):\n  " + "\n  ".join(bad))


# ---- the checker itself, on a throw-away package -----------------------------------------
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def toy(tmp_path):
    return _write(tmp_path / "ambient_rlhf", {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from ambient_rlhf.data import b\n",
        "data/b.py": "def f():\n    from . import a  # function-local, relative\n",
        "data/c.py": "import importlib\nNAME = 'ambient_rlhf.train.x'\n",
        "rl/__init__.py": "",
        "rl/k.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ambient_rlhf.models.m import M\n"
                   "import transformers.utils\n",
        "models/__init__.py": "",
        "models/m.py": "from ambient_rlhf.rl.k import *\n",
        "train/__init__.py": "",
        "train/x.py": "import importlib\nm = importlib.import_module('ambient_rlhf.eval.e')\n",
        "eval/__init__.py": "",
        "eval/e.py": "from ambient_rlhf.train import x\n",
        "eval/g.py": "def cli(argv):\n    from ambient_rlhf.cli import common_parser\n",
        "eval/h.py": "import importlib\nMOD = 'ambient_rlhf.cli.report'\n",
        "run.py": "from .cli import report\n",
        "cli/__init__.py": "def common_parser():\n    pass\n",
        "cli/report.py": "from ambient_rlhf.cli import common_parser\nfrom ambient_rlhf.eval import g\n",
    })


def test_checker_finds_cycles_and_upward_edges(toy):
    graph, external, named = import_graph(toy)
    assert graph["ambient_rlhf.data.a"] == {"ambient_rlhf.data.b"}
    assert graph["ambient_rlhf.data.b"] == {"ambient_rlhf.data.a"}
    assert strongly_connected(graph) == [
        ["ambient_rlhf.data.a", "ambient_rlhf.data.b"],
        ["ambient_rlhf.eval.e", "ambient_rlhf.train.x"],  # through importlib.import_module
        ["ambient_rlhf.models.m", "ambient_rlhf.rl.k"],  # through the TYPE_CHECKING import
    ]
    assert direction_violations(graph, external, named) == [
        "ambient_rlhf.data.c -> ambient_rlhf.train.x (named in a string: a dynamic import)",
        "ambient_rlhf.rl.k -> ambient_rlhf.models.m",
        "ambient_rlhf.rl.k -> transformers",
    ]


def test_checker_finds_imports_of_the_cli(toy):
    graph, _, named = import_graph(toy)
    # cli/ importing itself and the library below it is fine; the reverse is not
    assert entry_violations(graph, named) == [
        "ambient_rlhf.eval.g -> ambient_rlhf.cli",  # function-local
        "ambient_rlhf.eval.h -> ambient_rlhf.cli.report (named in a string: a dynamic import)",
        "ambient_rlhf.run -> ambient_rlhf.cli.report",  # relative
    ]
