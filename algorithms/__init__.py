"""Built-in algorithms, one module each; importing this package registers them all.

Installed as `isopo_bench.algorithms` (see pyproject.toml). To add an algorithm, drop a module here that
subclasses `isopo_bench.algorithm_api.Algorithm` (with its `Settings` and `presets`) and decorates it with
`@ALGORITHMS.register("name")`: the modules below are discovered, nothing else is edited. Modules whose
name starts with `_` are private helpers and are not imported. Third-party packages use the
`isopo_bench.algorithms` entry-point group.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
