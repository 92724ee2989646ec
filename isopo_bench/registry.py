"""A tiny generic plug-in registry shared by algorithms, advantage estimators, tasks and rollout engines.

Entries are registered by decorator or lazily as "module:attr" strings (so that importing the package
never imports heavy optional back ends such as vLLM). Third-party packages add entries through an
entry-point group named after the registry (e.g. `isopo_bench.algorithms`).
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from isopo_bench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None, builtin_package: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        # The package whose modules register the built-in entries; imported on first lookup so that
        # plug-in modules may import the registry without an import cycle.
        self.builtin_package = builtin_package
        self._entries: dict[str, T | str] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@ALGORITHMS.register("reinforce")`. A duplicate name raises."""

        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register "package.module:attr", imported on first `get`."""
        self._add(name, target)

    def _add(self, name: str, obj: T | str) -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} `{name}` is already registered; pick another name")
        self._entries[name] = obj

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.builtin_package:
            importlib.import_module(self.builtin_package)
        if not self.entry_point_group:
            return
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._entries and self._entries[ep.name] != ep.value:
                dist = ep.dist.name if ep.dist else "an installed package"
                raise ValueError(
                    f"{dist} registers {self.kind} `{ep.name}` through entry point group {self.entry_point_group}, "
                    "but that name is taken; rename it in that package's entry points"
                )
            self._entries[ep.name] = ep.value

    def get(self, name: str) -> T:
        self._load_entry_points()
        if name not in self._entries:
            known = sorted(self._entries)
            near = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise UnknownNameError(
                f"unknown {self.kind} `{name}`.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}"
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
