"""Stage configuration: dataclasses with a docstring under every field.

Every stage declares one dataclass.  A config is built from, in order of precedence:
its defaults, a YAML file (``--config file.yaml``) and ``key=value`` overrides from the
command line (dotted keys reach nested dataclasses: ``labels.min_score_ratio=3``).
An unknown key is an error that names the key and the valid ones; values are coerced
to the declared type so that ``learning_rate=1e-5`` is a float and ``lora=true`` a bool.

Field docstrings (the string literal under a field, as in cleanrl) are read from the
source with :mod:`ast`, so ``ambient <stage> --help-config`` prints them.

Renamed keys: a config class may declare ``RENAMED = {"old": "new"}`` (a ``ClassVar``);
an old name is refused with the new name and the value to write (:func:`upgrade_keys`):
one spelling per setting, so a file and a command line never disagree about which wins.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger

T = TypeVar("T")
log = get_logger("config")


class ConfigError(AmbientError):
    """A configuration key or value is wrong."""


def field_docs(cls: type) -> dict[str, str]:
    """Return ``{field_name: docstring}`` for a dataclass, read from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(src)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if (
                    isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                ):
                    docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclasses.dataclass(frozen=True)
class Bound:
    """Allowed range of a numeric config field, declared in its annotation:
    ``lr: Annotated[float, above(0)] = 2e-5``.  Checked for every config that
    :func:`from_dict` (and so :func:`load_config`) builds, and by :func:`check_bounds`."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return " and ".join(parts)

    def holds(self, v: Any) -> bool:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            return True  # None (an optional field left unset) and non-numbers are not ranged
        if v != v:
            return False  # NaN is in no range
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True


def at_least(x: float) -> Bound:
    """``>= x``."""
    return Bound(lo=x)


def above(x: float) -> Bound:
    """``> x``."""
    return Bound(lo=x, lo_open=True)


def between(lo: float, hi: float, hi_open: bool = False) -> Bound:
    """``lo <= v <= hi`` (``< hi`` with ``hi_open``)."""
    return Bound(lo=lo, hi=hi, hi_open=hi_open)


def _bounds(cls: type) -> dict[str, Bound]:
    out = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        if typing.get_origin(tp) is typing.Annotated:
            for meta in tp.__metadata__:
                if isinstance(meta, Bound):
                    out[name] = meta
    return out


def check_bounds(cfg: Any, prefix: str = "", recurse: bool = True) -> None:
    """Raise ConfigError naming the first field of ``cfg`` outside its declared :class:`Bound`
    (nested dataclasses too, with dotted keys)."""
    for name, b in _bounds(type(cfg)).items():
        v = getattr(cfg, name)
        if not b.holds(v):
            raise ConfigError(f"config key '{prefix}{name}': {v!r} is out of range; it must be {b.describe()}")
    if recurse:
        for f in dataclasses.fields(cfg):
            v = getattr(cfg, f.name)
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                check_bounds(v, prefix + f.name + ".")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type ``tp`` (raise ConfigError)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': cannot use {value!r} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v] if value else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    return value


def renamed_keys(cls: type) -> dict[str, str]:
    """``{old name: new name}`` of a config class (its ``RENAMED`` class variable)."""
    return {old: (new[0] if isinstance(new, tuple) else new) for old, new in getattr(cls, "RENAMED", {}).items()}


def upgrade_keys(cls: type, data: Any, prefix: str = "") -> Any:
    """Refuse the old name of a renamed key (nested sections too) with the new name and
    the value to give it.  A ``RENAMED`` value may be ``(new, convert)``: ``convert(value)``
    gives the new key's value for the hint (and raises ConfigError where there is none).
    Returns ``data`` unchanged when no old name is used."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    table = getattr(cls, "RENAMED", {})
    hints = _type_hints(cls)
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k in table:
            new, convert = table[k] if isinstance(table[k], tuple) else (table[k], None)
            value = convert(v) if convert is not None else v
            raise ConfigError(f"config key '{prefix}{k}' was renamed '{prefix}{new}' (the name transformers and "
                              f"TRL use): write {prefix}{new}={value}")
        tp = hints.get(k)
        if tp is not None and dataclasses.is_dataclass(tp):
            v = upgrade_keys(tp, v, prefix + k + ".")
        out[k] = v
    return out


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping, rejecting unknown keys
    (old names of renamed keys are refused with a hint: :func:`upgrade_keys`)."""
    if data is None:
        data = {}
    data = upgrade_keys(cls, data, prefix)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{k}' for {cls.__name__}; valid keys: "
                + ", ".join(prefix + n for n in fields)
            )
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    # nested dataclasses not mentioned keep their defaults
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
    check_bounds(cfg, prefix, recurse=False)  # nested ones were checked when they were built
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config (tuples become lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def parse_value(text: str) -> Any:
    """Parse a command-line value as YAML (so ``3`` is an int, ``[a, b]`` a list)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{p}'")
        node[parts[-1]] = parse_value(text)
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
    return data


def load_config(
    cls: type[T],
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Defaults <- ``base`` <- YAML file (its ``section`` if given) <- ``key=value`` overrides."""
    data: dict[str, Any] = upgrade_keys(cls, dict(base or {}))
    if config_file is not None:
        y = read_yaml(config_file)
        if section is not None:
            y = y.get(section, {}) or {}
        data = deep_merge(data, upgrade_keys(cls, y))
    if overrides:
        data = deep_merge(data, upgrade_keys(cls, overrides_to_dict(overrides)))
    return from_dict(cls, data)


def config_help(cls: type, prefix: str = "") -> str:
    """Human-readable list of keys, types, defaults and docstrings."""
    lines = []
    docs = field_docs(cls)
    hints = _type_hints(cls)
    bounds = _bounds(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{f.name}:  ({tp.__name__})")
            lines.append(config_help(tp, prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        rng = f", {bounds[f.name].describe()}" if f.name in bounds else ""
        lines.append(f"{prefix}{f.name} = {default!r}   [{tname}{rng}]")
        doc = docs.get(f.name, "")
        for dl in doc.splitlines():
            lines.append(f"    {dl}")
    renamed = renamed_keys(cls)
    if renamed:
        lines.append(f"{prefix}(old names, refused with a hint: "
                     + ", ".join(f"{prefix}{o} -> {prefix}{n}" for o, n in renamed.items()) + ")")
    return "\n".join(lines)


def check_documented(cls: type) -> list[str]:
    """Names of fields (recursively) that have no docstring; used by a test."""
    missing = []
    docs = field_docs(cls)
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in docs:
            missing.append(f"{cls.__name__}.{f.name}")
        if dataclasses.is_dataclass(hints[f.name]):
            missing.extend(check_documented(hints[f.name]))
    return missing
