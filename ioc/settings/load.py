"""The config file -> `Settings`: YAML read, every key and type checked, then the rules.

Every problem names its key (`dm.storage_root: ...`). Relative paths resolve
against the config file's folder and `~` expands. Loading collects every
problem before failing, so `--check` can list them all at once. A value under
a key that may hold a secret is never quoted in a problem.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .rules import semantic_problems
from .schema import Settings


class ConfigError(Exception):
    """The config has problems; `problems` lists each, naming its key.

    `settings` is what could be built around them (the keys in error at their
    defaults), or None, so `--check` can look further at the rest.
    """

    def __init__(self, problems: list[str], settings: Settings | None = None):
        self.problems = problems
        self.settings = settings
        super().__init__("\n".join(problems))


def load_config(path: Path | str) -> Settings:
    """Read and validate a YAML config file; raise ConfigError listing every problem."""
    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError([f"cannot read config {path}: {error.strerror}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{path} is not valid YAML: {error}"]) from None
    return settings_from_dict(raw or {}, base=path.parent, source=path)


def settings_from_dict(raw: object, *, base: Path, source: Path | None = None) -> Settings:
    """`raw` (the parsed YAML) bound onto `Settings` and checked; relative paths resolve against `base`."""
    problems: list[str] = []
    settings = _build(Settings, raw, "", base, problems)
    if settings is not None:
        settings = dataclasses.replace(settings, source=source)
        problems += semantic_problems(settings)
    if problems:
        raise ConfigError(problems, settings)
    return settings


def _build(cls: type, raw: object, where: str, base: Path, problems: list[str]):
    """Build dataclass `cls` from a mapping, checking keys and types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where.rstrip('.') or 'config'}: expected a mapping of keys, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    values = {}
    for key, value in raw.items():
        key_path = f"{where}{key}"
        if key not in known:
            problems.append(f"{key_path}: unknown key (known: {', '.join(sorted(known))})")
            continue
        converted = _convert(hints[key], value, key_path, base, problems)
        if converted is not _INVALID:
            values[key] = converted
    return cls(**values)


_INVALID = object()


def _convert(hint, value, key_path: str, base: Path, problems: list[str]):
    """`value` as the type `hint` says; _INVALID, its problem added to `problems`, when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        built = _build(hint, value, key_path + ".", base, problems)
        return _INVALID if built is None else built
    if origin in (typing.Union, types.UnionType):
        if value in (None, "") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key_path, base, problems)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key_path}: expected a mapping of names, got {type(value).__name__}")
            return _INVALID
        items = {str(k): _convert(args[1], v, f"{key_path}.{k}", base, problems) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not _INVALID}
    leaf = _LEAVES.get(origin or hint)
    if leaf is None:
        raise TypeError(f"no converter for {hint}")  # a programming error, not a config one
    try:
        return leaf(hint, value, base, _shown(key_path, value))
    except _Unfit as unfit:
        problems.append(f"{key_path}: {unfit}")
        return _INVALID


class _Unfit(Exception):
    """A config value of the wrong kind; the message follows the key in the problem."""


def _names(hint, value, base: Path, shown: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(isinstance(v, (dict, list, bool)) or v is None for v in value):
        raise _Unfit(f"expected a list of names or numbers, got {shown}")
    return tuple(str(v) for v in value)


def _path(hint, value, base: Path, shown: str) -> Path:
    if not isinstance(value, str):
        raise _Unfit(f"expected a path, got {shown}")
    if value == "":
        raise _Unfit("must not be empty")
    return (base / Path(value).expanduser()).resolve()


def _flag(hint, value, base: Path, shown: str) -> bool:
    if not isinstance(value, bool):
        raise _Unfit(f"expected true or false, got {shown}")
    return value


def _number(hint, value, base: Path, shown: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
        raise _Unfit(f"expected {'a whole number' if hint is int else 'a number'}, got {shown}")
    return hint(value)


def _text(hint, value, base: Path, shown: str) -> str:
    if isinstance(value, (dict, list, bool)) or value is None:
        raise _Unfit(f"expected text, got {shown}")
    return str(value)


_LEAVES = {tuple: _names, Path: _path, bool: _flag, int: _number, float: _number, str: _text}


_SECRET_WORDS = ("credential", "secret", "password", "token")


def _shown(key_path: str, value: object) -> str:
    """A value as a problem quotes it; never the value of a key that may hold a secret."""
    name = key_path.rsplit(".", 1)[-1].lower()
    return "a value (not shown: the key may hold a secret)" if any(w in name for w in _SECRET_WORDS) else repr(value)
