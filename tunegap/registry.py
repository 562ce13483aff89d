"""One registry mechanism for models, datasets, augmentations and workloads, and plugins.

Every kind of named thing is a `Registry`: `tunegap.models.MODELS`, `tunegap.data.DATASETS`,
`tunegap.data.AUGMENTATIONS`, `tunegap.workloads.WORKLOADS`. A user adds to them with the
public decorators and functions (`register_model`, `register_dataset`, `register_workload`),
from their own script, from a `--plugin` module or file, or from an installed package that
names a module in the entry-point group `tunegap.workloads`.

Ray's worker processes never run the user's script, so a trial carries what its workload
needs (`snapshot`, taken in the driver) and installs it in the worker (`install`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "tunegap.workloads"
# Every registry by kind, so a snapshot of several kinds travels as one plain dict.
_REGISTRIES: dict[str, Registry[Any]] = {}
_entry_points_loaded = False


class PluginError(ValueError):
    """A plugin that cannot be found or imported: one line, exit status 2."""


class Registry(Generic[T]):
    """Named entries of one kind; unknown names get one line listing the known ones.

    >>> colours = Registry("colour")
    >>> colours.add("red", "#f00")
    '#f00'
    >>> colours.get("blue")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'blue': use one of red
    """

    def __init__(self, kind: str) -> None:
        if kind in _REGISTRIES:
            raise ValueError(f"a registry of {kind}s exists already")
        self.kind = kind
        self._entries: dict[str, T] = {}
        _REGISTRIES[kind] = self

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register `entry` under `name`; a second, different entry needs `replace=True`."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{self.kind} name {name!r} is not allowed: use a non-empty string")
        old = self._entries.get(name)
        if old is not None and old is not entry and not replace:
            raise ValueError(
                f"{self.kind} {name!r} is registered twice: pick another name, or pass "
                "replace=True to override it"
            )
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """`@registry.decorator(name)`: register the decorated object, return it unchanged."""

        def add(entry: T) -> T:
            return self.add(name, entry, replace=replace)

        return add

    def get(self, name: str) -> T:
        """The entry called `name`, or one line naming it and the choices."""
        if name not in self._entries:
            load_entry_points()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            choices = ", ".join(self.names()) or "(none registered)"
            raise ValueError(f"unknown {self.kind} {name!r}: use one of {choices}") from None

    def names(self) -> list[str]:
        load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # Dict-style access, for code and tests that treat a registry as the mapping it is.
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, entry: T) -> None:
        self.add(name, entry, replace=True)

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def remove(self, name: str) -> None:
        """Forget `name` (a test's or a notebook's temporary entry)."""
        if name not in self._entries:
            raise KeyError(name)
        del self._entries[name]

    def __len__(self) -> int:
        return len(self.names())


def snapshot(wanted: Mapping[str, Iterable[str | None]]) -> dict[str, dict[str, Any]]:
    """The entries named in `wanted` ({kind: names}), ready to pickle into Ray's workers.

    Entries defined outside tunegap and outside installed packages (a user's script, a
    `--plugin` file, a module beside it) travel by value: a worker on another node may
    have no copy of that code to import.
    """
    out: dict[str, dict[str, Any]] = {}
    for kind, names in wanted.items():
        registry = _REGISTRIES[kind]
        entries = {name: registry.get(name) for name in names if name is not None}
        for entry in entries.values():
            _pickle_by_value_if_local(entry)
        out[kind] = entries
    return out


def install(entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Register a `snapshot` in this process (a Ray worker), replacing older copies."""
    for kind, named in entries.items():
        for name, entry in named.items():
            _REGISTRIES[kind].add(name, entry, replace=True)


def _pickle_by_value_if_local(entry: Any) -> None:
    # An entry may be tunegap's own record around the user's code (an optimizer's spec
    # holding its builder): the code inside travels by value too.
    parts = ([getattr(entry, f.name) for f in dataclasses.fields(entry)]
             if dataclasses.is_dataclass(entry) and not isinstance(entry, type) else [])
    for thing in (entry, *parts):
        module = sys.modules.get(getattr(thing, "__module__", "") or "")
        if module is None or module.__name__ == "__main__" or _is_installed(module):
            continue  # __main__ is pickled by value anyway; installed code is on every node
        from ray import cloudpickle  # the copy Ray serializes with, not a separate install

        cloudpickle.register_pickle_by_value(module)


def _is_installed(module: ModuleType) -> bool:
    name = module.__name__
    if name == "tunegap" or name.startswith("tunegap."):
        return True
    path = getattr(module, "__file__", None)
    if path is None:
        return True  # built in
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    return any(Path(path).resolve().is_relative_to(Path(root).resolve()) for root in roots)


def load_plugin(spec: str) -> ModuleType:
    """Import a plugin: a module name (`my_lab.workloads`) or a Python file (`nets.py`).

    Importing it runs its `register_*` calls. A file is imported under its own stem, once.

    >>> load_plugin("tunegap.studies.ghost_size").__name__
    'tunegap.studies.ghost_size'
    """
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise PluginError(f"--plugin {spec!r}: no such file")
        return _import_file(path.resolve(), spec)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name is not None and spec.startswith(err.name):
            raise PluginError(
                f"--plugin {spec!r}: no module or .py file of that name (give a module "
                "importable here, or a path to a .py file)"
            ) from None
        raise PluginError(f"--plugin {spec!r} failed to import: {err}") from None
    except Exception as err:
        raise PluginError(f"--plugin {spec!r} failed to import: {type(err).__name__}: {err}") from None


def _import_file(path: Path, spec: str) -> ModuleType:
    name = f"tunegap_plugin_{path.stem}"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f"--plugin {spec!r}: cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise PluginError(f"--plugin {spec!r} failed to import: {type(err).__name__}: {err}") from None
    return module


def load_plugins(specs: Iterable[str]) -> list[ModuleType]:
    """Import plugins, in order: module names or `.py` files whose `register_*` calls add
    workloads, models, datasets or optimizers (what `--plugin` does on a command line). What
    they register reaches Ray's workers with the study; a bad plugin is a `PluginError` in
    one line.

    >>> [m.__name__ for m in load_plugins(["tunegap.studies.ghost_size"])]
    ['tunegap.studies.ghost_size']
    """
    return [load_plugin(spec) for spec in specs]


def load_entry_points() -> None:
    """Import every module that installed packages name in the `tunegap.workloads` group.

    Runs once per process. An entry point may name a module (importing it registers) or an
    object: a callable is called with no arguments, anything else is ignored.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except Exception as err:
            raise PluginError(
                f"entry point {point.name!r} ({point.value}) of group {ENTRY_POINT_GROUP} "
                f"failed to import: {type(err).__name__}: {err}"
            ) from None
        if callable(loaded) and not isinstance(loaded, ModuleType | type):
            loaded()


def accepts_keyword(function: Any, name: str) -> bool:
    """Whether `function(name=...)` is a valid call: a parameter `name`, or **kwargs."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)
