"""The layout the design asks for: the scripts, tools and runner/ import one another never in a circle;
core.py copyable on its own; the notebook reading only results files."""
import ast
import glob
import graphlib
import os
import sys

from conftest import ROOT

MACHINERY = {"argparse", "subprocess", "signal", "platform", "importlib"}  # the experiment's, not the method's


def imported_modules(path):
    """The dotted names of the modules a file imports: `from runner import jobs` imports runner.jobs."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def repository_modules():
    """Dotted module name -> its file, for the top level, runner/ and tools/ (run with tools/ on sys.path)."""
    files = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(ROOT, "*.py"))}
    files |= {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(ROOT, "tools", "*.py"))}
    files |= {f"runner.{os.path.basename(p)[:-3]}": p for p in glob.glob(os.path.join(ROOT, "runner", "*.py"))
              if not p.endswith("__init__.py")}
    return {name: os.path.relpath(path, ROOT) for name, path in files.items()}


def repository_imports(modules):
    """module -> the modules of this repository it imports, for each of `modules` (name -> file)."""
    ours = set(repository_modules())
    return {name: imported_modules(path) & ours - {name} for name, path in modules.items()}


def import_cycle(imports):
    """One circle of imports (a list of modules, the first repeated at the end), or None."""
    try:
        graphlib.TopologicalSorter(imports).prepare()
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def test_core_needs_only_torch_numpy_and_the_standard_library():
    modules = {name.split(".")[0] for name in imported_modules("core.py")}
    assert modules - {"torch", "numpy"} <= set(sys.stdlib_module_names), modules
    assert not modules & MACHINERY, modules & MACHINERY
    assert "git" not in open(os.path.join(ROOT, "core.py")).read().lower().split()


def test_no_import_cycles():
    """The scripts and tools import one another (ensemble.py reuses mnist.py's settings, gpu_check
    bench's machinery, ...), never in a circle."""
    cycle = import_cycle(repository_imports(repository_modules()))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_notebook_imports_nothing_of_this_repository():
    """It reads only the results files, so it shows what was run, not what the code does now."""
    ours = {name.split(".")[0] for name in repository_modules()} | {"runner"}
    imported = {name.split(".")[0] for name in imported_modules(os.path.join("notebooks", "results.py"))}
    assert not imported & ours, imported & ours
