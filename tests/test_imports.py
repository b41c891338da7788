"""The package's import graph, read from the source with ast: no cycles, and the kernel modules
sit on floors (errors ← io ← kernels ← compute ← teach ← run ← api ← cli ← entry points).

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
    """{module: the kernelcli modules it imports}, e.g. {"kernelcli.kernels.generate": {"kernelcli.kernels.kernel", ...}}."""
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
    assert "kernelcli.kernels.kernel" in graph["kernelcli.kernels.generate"]  # top-level `from .kernel import ...`
    assert "kernelcli.kernels.analysis" in graph["kernelcli.compute.convolve"]  # an import inside a function
    assert "kernelcli.run.batch" in graph["kernelcli.run.runner"]  # `from . import batch`: the submodule
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_kernel_modules_build_on_each_other_in_one_direction():
    graph = import_graph()
    assert graph["kernelcli.errors"] == set()
    assert graph["kernelcli.kernels.kernel"] == {"kernelcli.errors"}  # the value type: nothing else of the package
    assert graph["kernelcli.kernels.generate"] <= {"kernelcli.errors", "kernelcli.kernels.kernel"}
    assert graph["kernelcli.kernels.analysis"] <= {"kernelcli.errors", "kernelcli.kernels.kernel"}
    # the library: no engine (torch), no CLI; images only for its atomic write of saved kernels,
    # storage only for kernel files at URLs
    assert graph["kernelcli.kernels.library"] <= {
        "kernelcli.errors", "kernelcli.kernels.kernel", "kernelcli.kernels.analysis", "kernelcli.kernels.generate",
        "kernelcli.io.images", "kernelcli.io.storage"}


# The floors of the package, bottom first: a module imports modules of its own floor or below.
# A floor is a sub-package (kernelcli.io), or a module named whole (kernelcli.errors).
FLOORS = [
    {"kernelcli.errors", "kernelcli.version"},
    {"kernelcli.io"},                                # codecs, stores, atomic writes
    {"kernelcli.kernels"},                           # the kernel value type, the YAML library, generators
    {"kernelcli.compute"},                           # options, the engine plan, filters, borders, mapping, budget
    {"kernelcli.teach", "kernelcli.console"},        # grids, toolkit, explain, animate; stderr and tables
    {"kernelcli.run"},                               # a whole job: plan, per-job step, executors, report
    {"kernelcli.api", "kernelcli.bench", "kernelcli.server.protocol", "kernelcli.server.service", "kernelcli.server.caller"},
    {"kernelcli.cli", "kernelcli"},                  # the commands; the package's lazy front door
    {"kernelcli.__main__", "kernelcli.server.client", "kernelcli.server.daemon", "kernelcli.server.worker"},  # entry points: they start the CLI
]


def floor_of(module: str) -> int:
    best = None
    for level, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (level, name)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best[0]


def test_no_module_imports_upward():
    """Each module imports only its own floor or floors below it: the library never imports the
    CLI, the engine never the runner, the kernel type nothing but errors."""
    graph = import_graph()
    assert "kernelcli.run.runner" in graph["kernelcli.cli.apply"]
    for module, targets in graph.items():
        upward = sorted(t for t in targets if floor_of(t) > floor_of(module))
        assert not upward, f"{module} imports upward: {upward}"
    assert graph["kernelcli.kernels.kernel"] == {"kernelcli.errors"}


def test_the_floor_rule_can_fail():
    assert floor_of("kernelcli.compute.filters") < floor_of("kernelcli.run.runner") < floor_of("kernelcli.cli.apply")
    assert floor_of("kernelcli.io.images") < floor_of("kernelcli.kernels.library")
