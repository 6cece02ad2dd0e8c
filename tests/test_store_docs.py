"""Issue #13: every public method of the store layer documents its contract (the protocols in
cronpy/store/interfaces.py, copied onto the implementations by @implements, or the
implementation's own), so a method added without one fails here."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = ["cronpy.store", "cronpy.store.interfaces", "cronpy.store.sql", "cronpy.store.sqlite",
           "cronpy.store.postgres", "cronpy.store.fleet", "cronpy.store.migrations", "cronpy.store.retry",
           "cronpy.store.salvage", "cronpy.locks", "cronpy.runner.recorder"]


@pytest.mark.parametrize("name", MODULES)
def test_every_public_store_method_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    missing = []
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj) and not obj.__doc__:
            missing.append(attr)
        if inspect.isclass(obj):
            for meth, member in vars(obj).items():
                fn = member.fget if isinstance(member, property) else member
                if not meth.startswith("_") and inspect.isfunction(fn) and not fn.__doc__:
                    missing.append(f"{attr}.{meth}")
    assert not missing, f"{name}: no docstring: {', '.join(missing)}"
