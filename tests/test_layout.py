"""The layering the design asks for: scripts -> experiment -> jobs, reports, errors, core, each module
importing only the modules below it; core.py copyable on its own; the notebook reading only results files."""
import ast
import glob
import graphlib
import os
import sys

from conftest import ROOT

MACHINERY = {"argparse", "subprocess", "signal", "platform", "importlib"}  # the experiment's, not the method's
# The modules the scripts share, bottom to top: each may import only those before it. Every other .py
# beside them is a script (mnist.py, ensemble.py, evaluate.py, bench.py, ...), which none of these imports.
SHARED = ["core", "errors", "reports", "jobs", "experiment", "autoattack_suite"]


def imported_modules(filename):
    tree = ast.parse(open(os.path.join(ROOT, filename)).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def repository_imports():
    """module -> the modules of this repository it imports, for every .py at the repository's root."""
    modules = {os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "*.py"))}
    return {module: imported_modules(module + ".py") & modules for module in modules}


def test_core_needs_only_torch_numpy_and_the_standard_library():
    modules = imported_modules("core.py")
    assert modules - {"torch", "numpy"} <= set(sys.stdlib_module_names), modules
    assert not modules & MACHINERY, modules & MACHINERY
    assert "git" not in open(os.path.join(ROOT, "core.py")).read().lower().split()


def test_each_shared_module_imports_only_those_below_it():
    imports = repository_imports()
    assert set(SHARED) <= set(imports)
    for i, module in enumerate(SHARED):
        upward = imports[module] - set(SHARED[:i])
        assert not upward, f"{module}.py imports {sorted(upward)}: a module above it in SHARED, or a script"


def test_no_import_cycles():
    """The scripts import one another (ensemble.py reuses mnist.py's settings, ...), never in a circle."""
    try:
        graphlib.TopologicalSorter(repository_imports()).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_the_notebook_imports_nothing_of_this_repository():
    """It reads only the results files, so it shows what was run, not what the code does now."""
    ours = imported_modules(os.path.join("notebooks", "results.py")) & set(repository_imports())
    assert not ours, ours
