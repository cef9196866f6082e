"""The layering the design asks for: scripts -> experiment -> core, and core.py copyable on its own."""
import ast
import os
import sys

from conftest import ROOT

MACHINERY = {"argparse", "subprocess", "signal", "platform", "importlib"}  # the experiment's, not the method's


def imported_modules(filename):
    tree = ast.parse(open(os.path.join(ROOT, filename)).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_needs_only_torch_numpy_and_the_standard_library():
    modules = imported_modules("core.py")
    assert modules - {"torch", "numpy"} <= set(sys.stdlib_module_names), modules
    assert not modules & MACHINERY, modules & MACHINERY
    assert "git" not in open(os.path.join(ROOT, "core.py")).read().lower().split()


def test_experiment_imports_core_and_no_script():
    modules = imported_modules("experiment.py")
    assert "core" in modules
    scripts = {"mnist", "svhn", "cifar10", "cifar100", "ensemble", "generators_study", "bench", "autoattack_suite"}
    assert not modules & scripts, modules & scripts
