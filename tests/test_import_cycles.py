"""No import cycles inside selfid/: the module graph, read from the source (imports at the top of a module and
inside functions alike: a function-local import that hides a cycle is still a cycle), has no strongly connected
component of more than one module. And a function imports a selfid module only to keep torch out of start-up.

An edge goes from a module to the module it imports: `import a.b` and `from a import b` (b a submodule) point at
a.b, `from a.b import name` at a.b. The package `__init__` files Python runs on the way to a submodule are not
edges: a package that re-exports its modules would otherwise be in a cycle with each of them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "selfid"


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module under selfid/ (a package by its __init__.py)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path], where: str = "anywhere") -> set[str]:
    """The selfid modules `name` (at `path`) imports: anywhere in its source, only at its top level ("top": outside
    functions), or only inside functions ("functions"); with where="top", other packages by their top name too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in ast.walk(f)}
    for node in ast.walk(tree):
        if where != "anywhere" and (id(node) in in_functions) != (where == "functions"):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in known else source)
    return {m for m in found if m in known and m != name or where == "top" and m.split(".")[0] != "selfid"}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm), each listed as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def a_cycle(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """The shortest closed path from the component's first module back to it, for the message: a -> b -> a."""
    members, start = set(component), component[0]
    came: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came[path[-1]])
                return [*reversed(path), start]
            if w not in came:
                came[w] = v
                queue.append(w)
    return component


def test_the_graph_sees_top_level_function_local_and_relative_imports(tmp_path):
    edges = graph()
    assert "selfid.errors" in edges["selfid.io"] or "selfid.errors" in edges["selfid.config"]
    assert "selfid.engine.inprocess" in edges["selfid.engine"]  # a package's __init__ re-exporting
    fake = {"selfid.a": tmp_path / "a.py", "selfid.b": tmp_path / "b.py", "selfid": tmp_path / "__init__.py"}
    fake["selfid.a"].write_text("def f():\n    from selfid import b\n")
    fake["selfid.b"].write_text("from .a import f\n")
    found = {n: imports(n, p, fake) for n, p in fake.items() if n != "selfid"}
    assert found == {"selfid.a": {"selfid.b"}, "selfid.b": {"selfid.a"}}
    assert cycles(found) == [["selfid.a", "selfid.b"]]
    assert a_cycle(found, ["selfid.a", "selfid.b"]) == ["selfid.a", "selfid.b", "selfid.a"]


def test_no_import_cycles_inside_selfid():
    edges = graph()
    found = cycles(edges)
    assert not found, "import cycles in selfid/:\n" + "\n".join(" -> ".join(a_cycle(edges, c)) for c in found)


HEAVY = {"torch", "transformers", "peft"}


def test_a_function_imports_selfid_only_to_keep_torch_out_of_start_up():
    """Lazy imports stay only where start-up time needs them: in cli.py (each verb imports what it runs, so
    `selfid --help` loads nothing) and where the module imported pulls torch or transformers at its top while the
    importing one does not (selfid.engine, selfid.train.sft: the audit and the study import light)."""
    known = modules()

    def with_packages(found: set[str]) -> set[str]:  # importing a.b.c runs a/__init__.py and a/b/__init__.py
        return found | {".".join(m.split(".")[:i]) for m in found if m in known for i in range(1, m.count(".") + 1)}

    top = {name: with_packages(imports(name, path, known, "top")) - {name} for name, path in known.items()}

    def pulls_torch(name: str, seen: frozenset = frozenset()) -> bool:
        return bool(top[name] & HEAVY) or any(pulls_torch(m, seen | {name}) for m in top[name]
                                             if m in known and m not in seen)

    light = ("selfid.audit.run", "selfid.audit.compare", "selfid.audit.scan", "selfid.study.steps", "selfid.study.report")
    assert not [name for name in light if pulls_torch(name)]  # rescore, compare, scan, study report: no torch
    wrong = [f"{name} imports {target} inside a function" + (" though it imports torch itself" if pulls_torch(name) else
                                                            ": it is light, import it at the top")
             for name, path in known.items() if name != "selfid.cli"
             for target in sorted(imports(name, path, known, "functions"))
             if not pulls_torch(target) or pulls_torch(name)]
    assert not wrong, "\n".join(wrong)
