"""Import pystemd's sd-bus binding (`pystemd.dbuslib`) and nothing else.

pystemd's package `__init__` eagerly imports its dynamic-proxy layer, which
loads lxml for D-Bus introspection: about 20 ms on a small host, paid by
every CLI call and every pod start, for code podunit never uses (it talks to
systemd through the typed facade in bus.py). When pystemd has not been
imported yet, register the package without running its `__init__`; its
submodules then import from the package directory as usual.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any


def dbuslib() -> Any:
    if "pystemd" not in sys.modules:
        spec = importlib.util.find_spec("pystemd")
        if spec is not None and spec.submodule_search_locations is not None:
            package = types.ModuleType("pystemd")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            package.__file__ = spec.origin
            sys.modules["pystemd"] = package
    import pystemd.dbuslib

    return pystemd.dbuslib
