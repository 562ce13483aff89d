"""The public API: every name in `tunegap.__all__` is there, documented, and its docstring's
example runs (doctest), as Optuna's `create_study` does."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import tunegap


def test_all_names_resolve_and_carry_an_example():
    assert sorted(tunegap.__all__) == sorted(set(tunegap.__all__))
    for name in tunegap.__all__:
        obj = getattr(tunegap, name)
        assert obj.__doc__ and ">>>" in obj.__doc__, name


@pytest.mark.parametrize("name", sorted(tunegap.__all__))
def test_docstring_examples_run(name):
    obj = getattr(tunegap, name)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    home = vars(sys.modules[obj.__module__])
    for test in finder.find(obj, name, globs=dict(home)):
        runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} example(s) failed"


def test_import_tunegap_is_cheap():
    # Names load on first use: `import tunegap` alone imports neither torch nor Ray.
    done = subprocess.run(
        [sys.executable, "-c", "import sys, tunegap; print('torch' in sys.modules, "
         "'ray' in sys.modules)"], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_one_registry_style_with_one_line_errors():
    for register, kind in ((tunegap.register_model, "model"),
                           (tunegap.register_dataset, "dataset")):
        add = register(f"api-test-{kind}")
        assert callable(add)
    with pytest.raises(ValueError, match=r"^unknown workload 'nope': use one of .*mnist1d-cnn"):
        tunegap.get_workload("nope")
    with pytest.raises(ValueError, match=r"takes a tunegap\.Workload"):
        tunegap.register_workload("mnist1d-cnn")
