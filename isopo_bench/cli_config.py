"""Command-line flags for plug-in settings: `--algorithm.<field>` and `--task.<field>`.

A config's algorithm and task sections hold `settings: Any` (the plug-in's own dataclass); which class is
known only once the plug-in's name is. So the CLI reads `--algorithm.name` / `--task.name` first, then
builds a flat flag section per plug-in (the shared fields plus the plug-in's own, each with its field
docstring as help) for tyro, and turns the parsed flags back into the config. Used by `train`,
`control-train` and `warmstart`, so every track documents the same plug-in fields in `--help`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Annotated, Any

from isopo_bench.config import AlgorithmConfig, TaskConfig
from isopo_bench.errors import ConfigError, UnknownNameError
from isopo_bench.plugins import ALGORITHMS, TASKS

SECTIONS = {AlgorithmConfig: ("algorithm", ALGORITHMS), TaskConfig: ("task", TASKS)}


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (the house style), from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _flag_fields(cls: type, instance) -> list[tuple]:
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "settings":
            continue
        help_text = docs.get(f.name, "")
        out.append((f.name, Annotated[hints[f.name], *(_help(help_text))], dataclasses.field(default=getattr(instance, f.name))))
    return out


def _help(text: str) -> tuple:
    import tyro

    return (tyro.conf.arg(help=text),) if text else ()


def section_flags_type(section: Any) -> type:
    """A flat dataclass: the section's shared fields + its plug-in's own settings fields."""
    kind, _ = SECTIONS[type(section)]
    shared = _flag_fields(type(section), section)
    own = _flag_fields(type(section.settings), section.settings) if section.settings is not None else []
    clash = {name for name, *_ in shared} & {name for name, *_ in own}
    if clash:
        raise ValueError(f"{kind} `{section.name}`'s settings reuse shared field names {sorted(clash)}; rename them")
    flags_cls = dataclasses.make_dataclass(f"{type(section).__name__}Flags_{_ident(section.name)}", shared + own, frozen=True)
    flags_cls.__doc__ = f"{kind} settings ({section.name})"
    return flags_cls


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def from_flags(section_type: type, flags, settings_cls: type | None):
    shared = {f.name: getattr(flags, f.name) for f in dataclasses.fields(section_type) if f.name != "settings"}
    if settings_cls is None:
        return section_type(**shared)
    own = {f.name: getattr(flags, f.name) for f in dataclasses.fields(settings_cls)}
    return section_type(**shared, settings=settings_cls(**own))


# ------------------------------------------------------------------------------------------------
def preparse_names(argv: list[str]) -> dict[str, str]:
    """`--algorithm.name` / `--task.name` if given (dashes or underscores, `=` or a separate value)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algorithm.name", "--algorithm-name", dest="algorithm", default=None)
    pre.add_argument("--task.name", "--task-name", dest="task", default=None)
    known, _ = pre.parse_known_args(argv)
    return {k: v for k, v in vars(known).items() if v is not None}


def with_plugin_defaults(section: Any, name: str | None, registries: dict | None = None) -> Any:
    """The section for plug-in `name` (its settings reset to that plug-in's defaults when the name changes)."""
    from isopo_bench.plugin_settings import settings_of

    kind, registry = SECTIONS[type(section)]
    registry = (registries or {}).get(kind, registry)
    if name is not None and name != section.name:
        section = dataclasses.replace(section, name=name, settings=None)
    try:
        return dataclasses.replace(section, settings=settings_of(registry, kind, section.name, section.settings))
    except UnknownNameError as exc:
        raise ConfigError(f"{kind}.name", str(exc), f"pick one of: {', '.join(registry.names())}") from None


def parse_config(config_cls: type, default, argv: list[str], registries: dict | None = None, **tyro_kwargs):
    """tyro over `config_cls` whose AlgorithmConfig/TaskConfig fields are flattened with their plug-ins'
    settings; returns a `config_cls` instance. `registries` replaces the registry of a section kind
    (the control track looks algorithms up in its own registry first)."""
    import tyro

    names = preparse_names(argv)
    changes, types = {}, {}
    for f in dataclasses.fields(config_cls):
        value = getattr(default, f.name)
        if type(value) in SECTIONS:
            kind, _ = SECTIONS[type(value)]
            value = with_plugin_defaults(value, names.get(kind), registries)
            flags_cls = section_flags_type(value)
            types[f.name] = (value, flags_cls)
            changes[f.name] = flags_cls(**{g.name: getattr(value, g.name) if hasattr(value, g.name)
                                          else getattr(value.settings, g.name) for g in dataclasses.fields(flags_cls)})
    cli_cls = dataclasses.make_dataclass(
        config_cls.__name__, [(name, flags_cls, dataclasses.field(default=changes[name])) for name, (_, flags_cls) in types.items()],
        bases=(config_cls,), frozen=True)
    cli_cls.__doc__ = config_cls.__doc__
    cli_default = cli_cls(**{f.name: changes.get(f.name, getattr(default, f.name)) for f in dataclasses.fields(config_cls)})
    parsed = tyro.cli(cli_cls, default=cli_default, args=argv, **tyro_kwargs)
    out = {}
    for f in dataclasses.fields(config_cls):
        value = getattr(parsed, f.name)
        if f.name in types:
            section, _ = types[f.name]
            value = from_flags(type(section), value, type(section.settings) if section.settings is not None else None)
        out[f.name] = value
    return config_cls(**out)
