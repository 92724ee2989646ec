"""Built-in tasks, one task family per module; importing this package registers them all.

Installed as `isopo_bench.tasks` (see pyproject.toml). To add a task, drop a module here that subclasses
`isopo_bench.task_api.Task` and decorates it with `@TASKS.register("name")`; modules needing optional
packages import them lazily so that this import never fails. Third-party packages use the
`isopo_bench.tasks` entry-point group.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
