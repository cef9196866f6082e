"""The layout the design asks for: at the top level only core.py, the experiment scripts and evaluate.py;
the machinery in the package runner/, whose modules import one another one way only, never in a circle;
the tools in tools/, each finding the repository from there; core.py copyable on its own; the notebook
reading only results files."""
import ast
import glob
import graphlib
import os
import sys

import pytest

from conftest import ROOT

TOP_LEVEL = {"core.py", "mnist.py", "svhn.py", "cifar10.py", "cifar100.py", "ensemble.py", "generators_study.py",
             "evaluate.py"}
MACHINERY = {"argparse", "subprocess", "signal", "platform", "importlib"}  # the experiment's, not the method's
RUNNER_MODULE_LINES = 400  # "one job, short enough to read at once": about 350 lines, and not much over


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


def runner_modules():
    return {name: path for name, path in repository_modules().items() if name.startswith("runner.")}


def test_the_top_level_holds_only_core_the_experiments_and_evaluate():
    found = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py"))}
    assert found == TOP_LEVEL, f"not in the design: {sorted(found - TOP_LEVEL)}; missing: {sorted(TOP_LEVEL - found)}"


def test_core_needs_only_torch_numpy_and_the_standard_library():
    modules = {name.split(".")[0] for name in imported_modules("core.py")}
    assert modules - {"torch", "numpy"} <= set(sys.stdlib_module_names), modules
    assert not modules & MACHINERY, modules & MACHINERY
    assert "git" not in open(os.path.join(ROOT, "core.py")).read().lower().split()


def test_runner_modules_import_one_another_one_way():
    cycle = import_cycle(repository_imports(runner_modules()))
    assert cycle is None, f"import cycle in runner/: {' -> '.join(cycle)}"


def test_the_cycle_check_sees_a_circle():
    cycle = import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert set(cycle) == {"a", "b", "c"} and cycle[0] == cycle[-1]
    assert import_cycle({"a": {"b"}, "b": set(), "d": {"a", "b"}}) is None


def test_runner_modules_import_no_script_or_tool():
    """The machinery lies below what uses it: it imports only its own modules and core."""
    for name, imports in repository_imports(runner_modules()).items():
        above = {module for module in imports if not module.startswith("runner.") and module != "core"}
        assert not above, f"{name} imports {sorted(above)}"


def test_no_import_cycles():
    """The scripts and tools import one another (ensemble.py reuses mnist.py's settings, gpu_check
    bench's machinery, ...), never in a circle."""
    cycle = import_cycle(repository_imports(repository_modules()))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("name", sorted(runner_modules()))
def test_each_runner_module_says_its_one_job_and_is_short(name):
    path = os.path.join(ROOT, runner_modules()[name])
    text = open(path).read()
    assert (ast.get_docstring(ast.parse(text)) or "").strip(), f"{name}: no docstring saying its job"
    assert len(text.splitlines()) <= RUNNER_MODULE_LINES, f"{name}: {len(text.splitlines())} lines"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "tools", "[!_]*.py"))), ids=os.path.basename)
def test_each_tool_puts_the_root_on_its_path_before_it_imports_the_repository(path):
    """Run as `python tools/x.py`, Python looks for imports in tools/ only: `import _root` must come first."""
    ours = {name.split(".")[0] for name in repository_modules()} - {"_root"}
    tree = ast.parse(open(path).read())
    imports = [name.split(".")[0] for node in tree.body for name in
               ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])]
    first_ours = [i for i, name in enumerate(imports) if name in ours]
    assert "_root" in imports and (not first_ours or imports.index("_root") < first_ours[0]), os.path.basename(path)


def test_the_notebook_imports_nothing_of_this_repository():
    """It reads only the results files, so it shows what was run, not what the code does now."""
    ours = {name.split(".")[0] for name in repository_modules()} | {"runner"}
    imported = {name.split(".")[0] for name in imported_modules(os.path.join("notebooks", "results.py"))}
    assert not imported & ours, imported & ours
