"""The module import graph of vim_tf: no import cycle, and every import points down the layers.

The graph is read from the source with `ast` (nothing is imported), with every import statement
counted wherever it is (module level or inside a function: a function-level import hides a cycle
from Python, not from this test).
"""

import ast
import os
import textwrap

from testcase import TestCase

PACKAGE = "vim_tf"
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# The layers, bottom to top: utils, config | data, losses, models | sampling | training |
# eval, export | bin, main_job. The groups a module of each group must not import (a group is
# the first name below the package: vim_tf.models.vim is in "models"). `reports` (benchmarks,
# parameter counts) sits with the binaries at the top. Groups missing here (bin, main_job,
# reports) may import anything.
_TOP = {"bin", "main_job", "reports"}
FORBIDDEN = {
    "utils": {"data", "losses", "models", "sampling", "training", "eval", "export"} | _TOP,
    "config": {"data", "losses", "models", "sampling", "training", "eval", "export"} | _TOP,
    "data": {"sampling", "training", "eval", "export"} | _TOP,
    "losses": {"sampling", "training", "eval", "export"} | _TOP,
    "models": {"sampling", "training", "eval", "export"} | _TOP,
    "sampling": {"training", "eval", "export"} | _TOP,
    "training": {"eval", "export"} | _TOP,
    "eval": _TOP,
    "export": _TOP,
}

# Edges allowed to break the rules while a move is in progress (none today); each entry names
# one (importer, imported) pair, and `test_known_exceptions_are_real` fails on stale entries.
KNOWN_EXCEPTIONS = set()


def module_names(package_dir, package=PACKAGE):
    """{dotted module name: file path} of every .py file under `package_dir`."""
    root = os.path.dirname(package_dir)
    out = {}
    for dirpath, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = path
    return out


def imported_modules(module, path, modules, package=PACKAGE):
    """{imported module of the package: first line} of every import statement in `path`.

    `from a.b import c` imports the module a.b.c when it is one, else the module a.b.
    """
    is_package = os.path.basename(path) == "__init__.py"
    tree = ast.parse(open(path).read(), path)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` names a.b.c's module
                target = target.rpartition(".")[0]
            if (target == package or target.startswith(package + ".")) and target != module:
                found.setdefault(target, node.lineno)
    return found


def import_graph(package_dir, package=PACKAGE):
    """{module: {imported module: line}} over every module of the package."""
    modules = module_names(package_dir, package)
    return {m: imported_modules(m, p, modules, package) for m, p in sorted(modules.items())}


def group(module, package=PACKAGE):
    """The layer group of a module: the first name below the package ("" for the package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_edges(graph, forbidden=FORBIDDEN, package=PACKAGE):
    """Sorted (importer, imported, line) of every import a rule of `forbidden` refuses."""
    return sorted(
        (m, t, line)
        for m, targets in graph.items()
        for t, line in targets.items()
        if group(t, package) in forbidden.get(group(m, package), ())
    )


def cycles(graph):
    """The strongly connected components of more than one module (each an import cycle),
    as sorted lists of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def without(graph, edges):
    """`graph` minus the (importer, imported) pairs of `edges`."""
    return {m: {t: n for t, n in ts.items() if (m, t) not in edges} for m, ts in graph.items()}


def describe_cycle(graph, component):
    """The import edges inside one cycle, as "a -> b (line n)" lines."""
    members = set(component)
    return [
        f"{m} -> {t} (line {n})"
        for m in component
        for t, n in sorted(graph[m].items())
        if t in members
    ]


class ImportGraphTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.graph = import_graph(PACKAGE_DIR)

    def test_the_graph_sees_function_level_imports(self):
        # bin/sample.py imports the generator inside main(), after checking its flags.
        self.assertIn("vim_tf.eval.generate", self.graph["vim_tf.bin.sample"])
        self.assertIn("vim_tf.sampling.decoding", self.graph["vim_tf.export.exporter"])
        self.assertGreater(len(self.graph), 50)

    def test_no_import_cycle(self):
        graph = without(self.graph, KNOWN_EXCEPTIONS)
        found = cycles(graph)
        message = "\n\n".join("\n".join(describe_cycle(graph, c)) for c in found)
        self.assertEqual(found, [], f"import cycles between modules:\n{message}")

    def test_imports_point_down_the_layers(self):
        bad = [e for e in upward_edges(self.graph) if e[:2] not in KNOWN_EXCEPTIONS]
        lines = "\n".join(f"{m} -> {t} (line {n})" for m, t, n in bad)
        self.assertEqual(bad, [], f"imports against the layer rules (FORBIDDEN):\n{lines}")

    def test_known_exceptions_are_real(self):
        # A stale entry (its edge gone, or no longer against a rule) must be deleted.
        upward = {e[:2] for e in upward_edges(self.graph)}
        stale = sorted(
            (m, t)
            for m, t in KNOWN_EXCEPTIONS
            if t not in self.graph.get(m, {})
            or (
                (m, t) not in upward
                and not cycles(without(self.graph, KNOWN_EXCEPTIONS - {(m, t)}))
            )
        )
        self.assertEqual(stale, [], "KNOWN_EXCEPTIONS entries that no longer break a rule")

    def test_checker_catches_a_planted_cycle_and_upward_import(self):
        root = os.path.join(self.get_temp_dir(), "planted")
        files = {
            "pkg/__init__.py": "",
            "pkg/utils/__init__.py": "",
            "pkg/utils/io.py": "import os\nfrom pkg.models import net\n",
            "pkg/models/__init__.py": "",
            "pkg/models/net.py": "from pkg.utils import io\n",
            "pkg/eval/__init__.py": "",
            "pkg/eval/a.py": "from . import b\n",
            "pkg/eval/b.py": "def f():\n    from pkg.eval.c import g\n",
            "pkg/eval/c.py": "import pkg.eval.a\nfrom ..utils.io import x\n",
        }
        for name, text in files.items():
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(textwrap.dedent(text))
        graph = import_graph(os.path.join(root, "pkg"), "pkg")
        self.assertEqual(graph["pkg.eval.c"], {"pkg.eval.a": 1, "pkg.utils.io": 2})
        self.assertEqual(
            cycles(graph),
            [["pkg.eval.a", "pkg.eval.b", "pkg.eval.c"], ["pkg.models.net", "pkg.utils.io"]],
        )
        self.assertEqual(
            describe_cycle(graph, ["pkg.eval.a", "pkg.eval.b", "pkg.eval.c"]),
            [
                "pkg.eval.a -> pkg.eval.b (line 1)",
                "pkg.eval.b -> pkg.eval.c (line 2)",
                "pkg.eval.c -> pkg.eval.a (line 1)",
            ],
        )
        self.assertEqual(
            upward_edges(graph, package="pkg"), [("pkg.utils.io", "pkg.models.net", 2)]
        )
        self.assertEqual(cycles(without(graph, {("pkg.eval.b", "pkg.eval.c")})), cycles(graph)[1:])
