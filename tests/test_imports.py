"""The package's import graph, read from the source with ast: no cycles, and the kernel modules
build on each other in one direction (kernel ← generate ← kernels; kernel ← analysis).

Every import counts, also one inside a function: a lazy import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kernelcli

PACKAGE = Path(kernelcli.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("kernelcli", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the kernelcli modules it imports}, e.g. {"kernelcli.generate": {"kernelcli.kernel", ...}}."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from . import x` imports the submodule x where there is one, else a name of the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import kernelcli.x.y` → the deepest module named
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_imports_and_cycles():
    graph = import_graph()
    assert "kernelcli.kernel" in graph["kernelcli.generate"]  # top-level `from .kernel import ...`
    assert "kernelcli.analysis" in graph["kernelcli.convolve"]  # an import inside a function
    assert "kernelcli.batch" in graph["kernelcli.runner"]  # `from . import batch`: the submodule
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_kernel_modules_build_on_each_other_in_one_direction():
    graph = import_graph()
    assert graph["kernelcli.errors"] == set()
    assert graph["kernelcli.kernel"] == {"kernelcli.errors"}  # the value type: nothing else of the package
    assert graph["kernelcli.generate"] <= {"kernelcli.errors", "kernelcli.kernel"}
    assert graph["kernelcli.analysis"] <= {"kernelcli.errors", "kernelcli.kernel"}
    # the library: no engine (torch), no CLI; images only for its atomic write of saved kernels,
    # storage only for kernel files at URLs
    assert graph["kernelcli.kernels"] <= {"kernelcli.errors", "kernelcli.kernel", "kernelcli.analysis",
                                          "kernelcli.generate", "kernelcli.images", "kernelcli.storage"}


ENTRY_POINTS = {"kernelcli.__main__", "kernelcli.client", "kernelcli.server"}  # above the CLI: they start it
ENGINE = {"kernelcli.convolve", "kernelcli.fast", "kernelcli.filters", "kernelcli.mapping"}


def test_no_module_imports_upward():
    """CLI ← runner ← engine ← kernel type: the CLI package may import the runner and the library;
    the runner imports no CLI module; the engine neither runner nor CLI; kernel.py only errors."""
    graph = import_graph()
    cli = {m for m in graph if m == "kernelcli.cli" or m.startswith("kernelcli.cli.")}
    assert {"kernelcli.cli.apply", "kernelcli.cli.common"} <= cli and "kernelcli.runner" in graph
    assert "kernelcli.runner" in graph["kernelcli.cli.apply"]
    for module in set(graph) - cli - ENTRY_POINTS:
        assert not graph[module] & cli, f"{module} imports the CLI: {sorted(graph[module] & cli)}"
    for module in ENGINE:
        assert not graph[module] & (cli | {"kernelcli.runner", "kernelcli.api"}), f"{module} imports upward"
    assert graph["kernelcli.kernel"] == {"kernelcli.errors"}
