"""Config loading: YAML files -> merged dict -> ``key=value`` overrides -> PipelineConfig.

An experiment file composes section files with ``include:`` (paths relative to the
including file) and may override any of their keys inline::

    include:
      hpo: ../hpo/smoke.yaml
    hpo:
      num_samples: 2          # deep-merged over the included file

Mappings merge key by key; a mapping whose ``type`` differs from the one it overrides
(``{type: categorical, ...}`` over ``{type: float, ...}``) replaces it instead.

Every value remembers the file it came from, so errors name file and dotted path, and
relative paths resolve against the directory of the file that set them. All problems are
collected and raised together as one ConfigError.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ray_pipeline.console import redact
from ray_pipeline.errors import ConfigError, Problem
from ray_pipeline.paths import expand_data_cache
from ray_pipeline.schema import REMOVED_KEYS, SECTIONS, PathMarker, PipelineConfig

Loc = tuple[str | int, ...]
COMMAND_LINE = "command line"


class _Composer:
    """Accumulates the merged document, where each value came from, and problems."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self.origins: dict[Loc, str] = {}
        self.problems: list[Problem] = []
        self.failed_sections: set[str] = set()

    def merge(self, loc: Loc, mapping: dict[str, Any], source: str) -> None:
        """Deep-merge ``mapping`` at ``loc``; later values win and take over the origin."""
        node = _node_at(self.doc, loc)
        if loc:  # the root keeps the experiment file as its origin
            self.origins[loc] = source
        for key, item in mapping.items():
            key_loc = (*loc, str(key))
            if _mergeable(node.get(str(key)), item):
                self.merge(key_loc, item, source)
            else:
                node[str(key)] = item
                self._mark(key_loc, item, source)

    def _mark(self, loc: Loc, value: Any, source: str) -> None:
        for key in [k for k in self.origins if k[: len(loc)] == loc]:
            del self.origins[key]
        self.origins[loc] = source
        children: Iterator[tuple[str | int, Any]] = iter(())
        if isinstance(value, dict):
            children = ((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            children = enumerate(value)
        for child_key, item in children:
            self._mark((*loc, child_key), item, source)

    def source_of(self, loc: Loc) -> str | None:
        if loc and loc not in self.origins:  # a section known only by keys set inside it
            inside = [src for key, src in self.origins.items() if key[: len(loc)] == loc]
            if inside:
                return inside[-1]  # the last one set
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.origins:
                return self.origins[loc[:end]]
        return None


def _mergeable(old: Any, new: Any) -> bool:
    """Mappings merge key by key, unless both name a different ``type`` (then new replaces)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return False
    return "type" not in old or "type" not in new or old["type"] == new["type"]


def _node_at(doc: dict[str, Any], loc: Loc) -> dict[str, Any]:
    """The mapping at ``loc``, created (or replacing a non-mapping) where missing."""
    node = doc
    for key in loc:
        child = node.get(str(key))
        if not isinstance(child, dict):
            child = node[str(key)] = {}
        node = child
    return node


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML file that must hold a mapping; raise ConfigError naming file and line."""
    if not path.is_file():
        raise ConfigError.at(str(path), "file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        msg = f"malformed YAML: {line}{problem}"
        raise ConfigError.at(str(path), msg) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError.at(str(path), "not UTF-8 text") from exc
    if data is None:
        return {}
    unending = _unending(data)
    if unending:
        raise ConfigError.at(str(path), f"holds a value that {unending}")
    if not isinstance(data, dict):
        msg = f"must hold a mapping of keys to values, but holds a {type(data).__name__}"
        raise ConfigError.at(str(path), msg)
    return data


def _compose(config_file: Path) -> _Composer:
    comp = _Composer()
    comp.origins[()] = str(config_file)
    top = read_yaml(config_file)
    includes = top.pop("include", None) or {}
    if not isinstance(includes, dict):
        comp.problems.append(
            Problem("include", "must map section names to files", str(config_file), includes, True)
        )
        includes = {}
    for section, rel in includes.items():
        where = f"include.{section}"
        if section not in SECTIONS:
            msg = f"unknown section; choose from {', '.join(SECTIONS)}"
            comp.problems.append(Problem(where, msg, str(config_file), section, True))
            continue
        target = config_file.parent / str(rel)
        try:
            comp.merge((section,), read_yaml(target), str(target))
        except ConfigError as exc:
            comp.failed_sections.add(section)
            for p in exc.problems:
                comp.problems.append(Problem(where, p.message, str(config_file), str(rel), True))
    comp.merge((), top, str(config_file))
    return comp


def parse_override(text: str) -> tuple[Loc, Any]:
    """Split ``a.b.0.c=value`` into its location and YAML-parsed value."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(
            f"expected key=value with a dotted key, e.g. hpo.num_samples=5; got {text!r}"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    unending = _unending(value)
    if unending:
        raise ValueError(f"the value {unending}")
    return tuple(int(p) if p.isdigit() else p for p in parts), value


ALIAS_LIMIT = 100_000
"""The most values a YAML value may expand to through aliases (``*a``) repeating anchors."""


def _unending(value: Any) -> str | None:
    """What makes ``value`` unfit to load, as the end of a sentence, or None when it is fine:
    it contains itself (a YAML alias inside its own anchor, ``&a [*a]``), or its aliases
    repeat anchors that repeat anchors, so that it expands to more than ``ALIAS_LIMIT``
    values ("billion laughs": a few lines that every later step would walk for hours).

    Each list and mapping is sized once (memoised by identity) and the walk uses no
    recursion, so this takes time in the size of the YAML text, not of its expansion."""
    sizes: dict[int, int] = {}  # id -> expanded size, of every container walked to the end
    open_: set[int] = set()  # the containers on the current path (an alias of one: a loop)
    shared = False  # some container is reached twice (only aliases do that)
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, dict | list):
            continue
        key = id(node)
        items = list(node.values() if isinstance(node, dict) else node)
        if children_done:
            open_.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(i), 1) for i in items)
            if shared and sizes[key] > ALIAS_LIMIT:
                return (
                    f"expands to more than {ALIAS_LIMIT:,} values: its YAML aliases (*a) "
                    "repeat anchors (&a) that repeat anchors; write the value out"
                )
            continue
        if key in open_:
            return (
                "contains itself; a YAML alias inside its own anchor (&a [*a]) has no end: "
                "write the value out"
            )
        if key in sizes:
            shared = True
            continue
        open_.add(key)
        stack.append((node, True))
        stack.extend((item, False) for item in items)
    return None


def _apply_override(comp: _Composer, text: str) -> None:
    try:
        loc, value = parse_override(text)
    except ValueError as exc:
        shown = text if text.isprintable() else repr(text)  # a newline would break the list
        comp.problems.append(Problem(redact(shown), redact(str(exc)), COMMAND_LINE))
        return
    node: Any = comp.doc
    for depth, key in enumerate(loc[:-1]):
        if isinstance(node, list) and isinstance(key, int) and key >= len(node):
            where = ".".join(map(str, loc[: depth + 1]))
            comp.problems.append(Problem(where, "no such list position", COMMAND_LINE))
            return
        child = node[key] if isinstance(node, list) and isinstance(key, int) else None
        if isinstance(node, dict):
            if node.get(str(key)) is None:  # missing or null: setting a key beneath creates it
                node[str(key)] = {}
            child = node[str(key)]
        if not isinstance(child, dict | list):
            where = ".".join(map(str, loc[: depth + 1]))
            msg = f"cannot set {'.'.join(map(str, loc))}: {where} is not a mapping"
            comp.problems.append(Problem(where, msg, COMMAND_LINE))
            return
        node = child
    last = loc[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict):
        node[str(last)] = value
    else:
        where = ".".join(map(str, loc))
        comp.problems.append(Problem(where, "no such list position", COMMAND_LINE))
        return
    comp._mark(loc, value, COMMAND_LINE)


def load_config(
    config_file: Path | str, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Load, merge, override and validate an experiment config; raise ConfigError on any problem."""
    path = Path(config_file)
    comp = _compose(path)
    for text in overrides:
        _apply_override(comp, text)
    config: PipelineConfig | None = None
    try:
        config = PipelineConfig.model_validate(comp.doc)
    except ValidationError as exc:
        comp.problems.extend(_problems_from(exc, comp))
    if comp.problems:
        # a key typed with a newline or another control character would break the list apart
        shown = [
            p if p.where.isprintable() else replace(p, where=repr(p.where)) for p in comp.problems
        ]
        raise ConfigError(shown, header=f"invalid configuration {path}")
    assert config is not None
    resolved: PipelineConfig = _resolve_paths(config, (), comp)
    return resolved


# --------------------------------------------------------------------------- validation errors


def _problems_from(exc: ValidationError, comp: _Composer) -> list[Problem]:
    problems = []
    for err in exc.errors():
        keep_last = err["type"] in {"missing", "extra_forbidden"}
        loc = _input_loc(comp.doc, err["loc"], keep_last=keep_last)
        if loc and loc[0] in comp.failed_sections:
            continue  # already reported as a missing or broken include
        where = ".".join(map(str, loc)) or "(top level)"
        message, show_value = _explain(err, loc)
        # A rule over a whole section or across sections names its own keys.
        show_value = show_value and bool(loc) and not isinstance(err.get("input"), dict)
        # A URI may carry credentials (refused, and never echoed to the console).
        show_value = show_value and not str(loc[-1]).endswith("uri")
        problems.append(Problem(where, message, comp.source_of(loc), err.get("input"), show_value))
    return problems


def _input_loc(doc: Any, loc: tuple[int | str, ...], *, keep_last: bool) -> Loc:
    """Drop the parts of a pydantic location that are not in the input (union tags).

    ``keep_last`` keeps a final part that is absent from the input: the name of a
    missing or unknown key rather than a tag.
    """
    out: list[str | int] = []
    node = doc
    for i, key in enumerate(loc):
        in_dict = isinstance(node, dict) and key in node
        if in_dict or (isinstance(node, list) and isinstance(key, int) and key < len(node)):
            node = node[key]
        elif i < len(loc) - 1 or not keep_last:
            continue
        out.append(key)
    return tuple(out)


def _explain(err: Any, loc: Loc) -> tuple[str, bool]:
    kind = err["type"]
    if kind == "missing":
        return "required key is missing; add it", False
    if kind == "extra_forbidden":
        if tuple(map(str, loc)) in REMOVED_KEYS:
            return REMOVED_KEYS[tuple(map(str, loc))], False
        allowed = sorted(_allowed_keys(loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
        return f"unknown key; {hint}", False
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg, kind not in {"model_type", "dict_type"}


def _allowed_keys(loc: Loc) -> set[str]:
    classes: list[type[BaseModel]] = [PipelineConfig]
    for key in loc:
        fields = [f for cls in classes if (f := cls.model_fields.get(str(key))) is not None]
        if fields:  # else a dict key or list index: its value is one of the same models
            classes = [m for f in fields for m in nested_models(f.annotation)]
    return {name for cls in classes for name in cls.model_fields}


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation refers to (through unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in nested_models(arg)]


# --------------------------------------------------------------------------- path resolution


def _is_path_field(annotation: Any, metadata: list[Any]) -> bool:
    if any(isinstance(m, PathMarker) for m in metadata):
        return True
    if typing.get_origin(annotation) is typing.Annotated:
        return any(isinstance(m, PathMarker) for m in typing.get_args(annotation)[1:])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_path_field(arg, []) for arg in typing.get_args(annotation))
    return False


def _resolve_paths(model: Any, loc: Loc, comp: _Composer) -> Any:
    """Make every relative ConfigPath absolute against the directory of its source file."""
    if isinstance(model, list):
        return [_resolve_paths(item, (*loc, i), comp) for i, item in enumerate(model)]
    if isinstance(model, dict):
        return {k: _resolve_paths(v, (*loc, k), comp) for k, v in model.items()}
    if not isinstance(model, BaseModel):
        return model
    updates: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, Path) and _is_path_field(field.annotation, field.metadata):
            # Only a value written in a file resolves against that file's directory;
            # defaults and command-line values resolve against the working directory.
            source = comp.origins.get((*loc, name))
            base = Path(source).parent if source and source != COMMAND_LINE else Path.cwd()
            expanded = expand_data_cache(value)
            updates[name] = Path(os.path.abspath(base / expanded))
        elif isinstance(value, BaseModel | list | dict):
            updates[name] = _resolve_paths(value, (*loc, name), comp)
    return model.model_copy(update=updates)


def default_config_path() -> Path:
    """The embedded demo config: the copy inside the installed wheel, else the repository's."""
    packaged = Path(str(resources.files("ray_pipeline"))) / "_config" / "experiment" / "demo.yaml"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "config" / "experiment" / "demo.yaml"
