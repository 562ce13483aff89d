"""Every example in tunegap's own docstrings runs, as written (the public API's examples run
in test_public_api, `run_study`'s tiny study among them)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tunegap

# The public API's own examples run in test_public_api.test_docstring_examples_run (a real
# study through Ray among them, and registrations that would clash if run twice).
RUN_ELSEWHERE = {f"{getattr(tunegap, name).__module__}.{getattr(tunegap, name).__qualname__}"
                 for name in tunegap.__all__}


def module_names() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(tunegap.__path__, "tunegap.")
                  if m.name != "tunegap.__main__")


@pytest.mark.parametrize("name", module_names())
def test_module_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples
             and t.name not in RUN_ELSEWHERE]
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} example(s) failed"
