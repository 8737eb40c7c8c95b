"""One converter between dataclasses and plain mappings (YAML/TOML/JSON), nested sections included.

Every typed config of axformer (a stage's config, the search's sub-configs, the pipeline's sections) and every
typed result read back from its JSON (the search report, the benchmark) goes through these two functions, so a
setting or a figure has one name and one type from where it is made to the file and back.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from axformer.errors import AxformerError

T = TypeVar("T")


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (also through ``X | None``), else None."""
    if is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(hint) if is_dataclass(a)), None)
    return None


def _wants_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and any(
        typing.get_origin(a) is tuple for a in typing.get_args(hint)
    )


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` as ``hint`` asks: a nested dataclass, a list of them, a mapping to them, or a tuple."""
    nested = _dataclass_in(hint)
    if nested is not None and isinstance(value, dict):
        return from_mapping(nested, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 and value is not None else value
    if origin is list and args and is_dataclass(args[0]) and isinstance(value, list):
        return [from_mapping(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and len(args) == 2 and is_dataclass(args[1]) and isinstance(value, dict):
        return {k: from_mapping(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if _wants_tuple(hint) and isinstance(value, list):
        return tuple(value)
    return value


def from_mapping(cls: type[T], values: Any, where: str) -> T:
    """Build ``cls`` from a mapping, sections nested as mappings; unknown keys are named with their section.

    ``where`` is the section's dotted name in messages (``search.tolerance``). A value that is already a
    ``cls`` is returned as it is. The result is validated when the class has ``validate()``.
    """
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise AxformerError(f"config section {where!r} must be a mapping of option names to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise AxformerError(
            f"unknown key(s) {', '.join(unknown)} in config section {where!r}; expected some of {', '.join(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise AxformerError(f"config section {where!r}: {exc}") from None
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def to_mapping(obj: Any, drop: tuple[str, ...] = ()) -> dict:
    """Plain values (tuples as lists, nested sections as mappings), so the result is YAML that reads back equal."""

    def plain(v):
        if is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: v for k, v in plain(obj).items() if k not in drop}
