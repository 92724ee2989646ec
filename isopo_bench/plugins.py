"""The project's registries. Built-in entries live in the plug-in folders (algorithms/, tasks/) and in
isopo_bench.advantages / isopo_bench.rollout; third-party packages add entries through the entry-point
groups named here."""

from isopo_bench.registry import Registry

ALGORITHMS: Registry = Registry("algorithm", "isopo_bench.algorithms", "isopo_bench.algorithms")
TASKS: Registry = Registry("task", "isopo_bench.tasks", "isopo_bench.tasks")
ADVANTAGES: Registry = Registry("advantage estimator", "isopo_bench.advantages", "isopo_bench.advantages")
ENGINES: Registry = Registry("rollout engine", "isopo_bench.engines", "isopo_bench.rollout")
