"""Typed construction of frozen dataclass configs from plain dicts (YAML) and ``a.b=v`` overrides.

The rules (docs/design.md §8): defaults live in the dataclasses; a YAML file or ``--set`` override may only name existing
fields (an unknown key is an :class:`InputError` naming the full dotted key) and every value must fit the field's
annotated type (``int``, ``float`` (ints accepted), ``bool``, ``str``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``X | None``, ``Literal[...]`` and nested dataclasses). The reverse, :func:`config_to_dict`, gives plain
python types (tuples as lists) that ``yaml.safe_dump`` and ``torch.load(weights_only=True)`` both accept, and
``from_dict(cls, config_to_dict(cfg)) == cfg`` holds for every config.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from pipeline.errors import InputError

__all__ = ["from_dict", "config_to_dict", "apply_overrides", "parse_override", "read_yaml", "dump_yaml"]

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples, int -> float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise InputError(f"config key {key!r}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except InputError as e:
                errors.append(str(e))
        raise InputError(f"config key {key!r}: {value!r} is not a {_type_name(tp)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise InputError(f"config key {key!r}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key {key!r}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise InputError(f"config key {key!r}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))) if args else tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _yaml_number(value) if isinstance(value, str) else value  # 3e5 / 3.0e+5 in YAML
        if isinstance(number, float) and number.is_integer() and abs(number) < 2 ** 53:
            return int(number)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _yaml_number(value) is not None:  # PyYAML reads 3e-4 (no dot) as a string
            return _yaml_number(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is typing.Any:
        return value
    else:
        raise InputError(f"config key {key!r}: unsupported annotation {_type_name(tp)}")
    raise InputError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _yaml_number(text: str) -> float | None:
    """Scientific notation PyYAML (YAML 1.1) leaves as a string, e.g. '3e-4', '3e5'; None otherwise."""
    t = text.strip().lower()
    if "e" not in t or t in ("inf", "nan"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build the dataclass ``cls`` from a (partial) nested dict; missing keys keep their defaults."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"config section {prefix.rstrip('.') or '<top>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown config key {prefix + str(unknown[0])!r} (known in this section: "
                         f"{', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]) and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = from_dict(hints[f.name], {}, prefix + f.name + ".")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation of a combination of values
        raise InputError(f"config section {prefix.rstrip('.') or '<top>'!r}: {e}") from None


def config_to_dict(cfg) -> dict:
    """Nested plain dict (lists instead of tuples) of a dataclass config."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(cfg)


def parse_override(text: str) -> tuple[list[str], object]:
    """'optim.lr=1e-3' -> (['optim', 'lr'], 1e-3); the value is parsed as YAML ('[1, 2]', 'true', 'null')."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise InputError(f"--set {text!r}: expected KEY=VALUE with a dotted key such as optim.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides) -> dict:
    """Return a copy of the nested dict with each 'a.b=v' override set (type checks happen in from_dict)."""
    out = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, p in enumerate(path[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise InputError(f"--set {text!r}: {'.'.join(path[:i + 1])!r} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _deepcopy(d):
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def read_yaml(path) -> dict:
    """A YAML mapping from a file; InputError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of config sections at the top level")
    return data


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
