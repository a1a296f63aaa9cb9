"""The config file (`corral.toml`) and where every effective setting came from.

`load_config` is the edge behind `load_settings`: defaults, then the TOML file, then `CORRAL_*`
variables, then CLI flags, each layer overriding the one before. Every problem stops the start
with the file, line and key (or the variable) named: unknown keys (with a suggestion), values of
the wrong TOML type, values out of range. The file's keys are the settings' names
(`num_parallel`, `keep_alive`, ...), except `models_dir` for the store root (`CORRAL_MODELS`),
because `[models."name"]` tables hold the per-model defaults.

TOML parsers do not report positions, so `key_lines` maps key paths to line numbers with a small
line scanner (tables, dotted and quoted keys); a key it cannot place is reported without a line.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral.config import DURATION_FIELDS, FILE_ONLY_FIELDS, ModelDefaults, Settings
from corral.errors import CorralError
from corral.names import ModelName

CONFIG_NAME = "config.toml"
STORE_KEY = "models_dir"
MODELS_TABLE = "models"
SECRET_FIELDS = frozenset({"api_key", "jwt_secret"})


class ConfigError(CorralError):
    """A config file or `CORRAL_*` value that cannot be used; the server does not start."""

    status = 400


@dataclass(frozen=True)
class LoadedConfig:
    """The effective settings, the file they were read from, and each value's source.

    `sources` maps a settings field (or `models."name".key` for per-model values) to `default`,
    `file PATH:LINE`, `env CORRAL_X` or `flag`.
    """

    settings: Settings
    path: Path | None
    sources: dict[str, str] = field(default_factory=dict)


def file_key(name: str) -> str:
    """The config-file key of a settings field."""
    return STORE_KEY if name == "models" else name


def env_var(name: str) -> str:
    return f"CORRAL_{name.upper()}"


_FIELD_OF_KEY = {file_key(n): n for n in Settings.model_fields if n not in FILE_ONLY_FIELDS}


def find_config_file(environ: Mapping[str, str], explicit: Path | None) -> Path | None:
    """`--config`, else `$CORRAL_CONFIG`, else `$CORRAL_HOME/config.toml` (or ~/.corral) if present."""
    named = explicit or (Path(environ["CORRAL_CONFIG"]) if environ.get("CORRAL_CONFIG", "").strip() else None)
    if named is not None:
        path = named.expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        return path
    home = environ.get("CORRAL_HOME", "").strip().strip("\"'") or "~/.corral"
    default = Path(home).expanduser() / CONFIG_NAME
    return default if default.is_file() else None


def load_config(environ: Mapping[str, str] | None = None, path: Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Build Settings from defaults <- file <- environment <- overrides, remembering sources."""
    env = os.environ if environ is None else environ
    found = find_config_file(env, path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if found is not None:
        values, sources = read_config_file(found)
    for name in Settings.model_fields:
        if name in FILE_ONLY_FIELDS:
            continue
        raw = env.get(env_var(name))
        if raw is not None and raw.strip().strip("\"'") != "":
            values[name] = raw.strip().strip("\"'")
            sources[name] = f"env {env_var(name)}"
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "flag"
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_validation_text(exc, sources)) from None
    return LoadedConfig(settings, found, sources)


def load_settings(environ: Mapping[str, str] | None = None, file: Path | None = None,
                  **overrides: Any) -> Settings:
    """The edge: `file` (or `$CORRAL_CONFIG`, or `$CORRAL_HOME/config.toml` when present),
    then `CORRAL_*` from `environ` over it, then `overrides` (CLI flags) over both.
    Raises `ConfigError` naming the file, line and key (or the variable)."""
    return load_config(environ, file, overrides).settings


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse and type-check a config file: (Settings field values, field -> `file PATH:LINE`)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    lines = key_lines(text)

    def where(*keys: str) -> str:
        line = lines.get(keys)
        return f"{path}:{line}" if line else str(path)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in data.items():
        if key == MODELS_TABLE:
            values["model_defaults"] = _model_sections(value, where, sources)
            sources["model_defaults"] = f"file {where(key)}"
            continue
        name = _FIELD_OF_KEY.get(key)
        if name is None:
            raise ConfigError(f"{where(key)}: unknown key {key!r}{_suggest(key, _FIELD_OF_KEY)}")
        values[name] = _typed(name, value, f"{where(key)}: {key}")
        sources[name] = f"file {where(key)}"
    return values, sources


def _model_sections(value: Any, where: Any, sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f'{where(MODELS_TABLE)}: models: expected [models."name"] tables '
                          f"(the store root is {STORE_KEY!r})")
    out: dict[str, dict[str, Any]] = {}
    allowed = ModelDefaults.model_fields
    for model, section in value.items():
        if ModelName.try_parse(model) is None:
            raise ConfigError(f'{where(MODELS_TABLE, model)}: invalid model name {model!r} in [models."{model}"]')
        for key, item in section.items():
            at = where(MODELS_TABLE, model, key)
            if key not in allowed:
                raise ConfigError(f'{at}: unknown key {key!r} in [models."{model}"]{_suggest(key, allowed)}'
                                  f" (allowed: {', '.join(allowed)})")
            kind = "duration" if key == "keep_alive" else "integer"
            _check_kind(kind, item, f'{at}: models."{model}".{key}')
            sources[f'models."{model}".{key}'] = f"file {at}"
        out[model] = dict(section)
    return out


def _suggest(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_kind(name: str) -> str:
    """The TOML type a settings field takes: integer, boolean, string, duration, list or table."""
    if name in DURATION_FIELDS:
        return "duration"
    if name == "allow_from_routes":
        return "table"
    annotation = Settings.model_fields[name].annotation
    if typing.get_origin(annotation) is tuple:
        return "list"
    args = set(typing.get_args(annotation)) or {annotation}
    if bool in args:
        return "boolean"
    if int in args:
        return "integer"
    return "string"


_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
               dict: "a table"}


def _type_name(value: Any) -> str:
    return _TOML_TYPES.get(type(value), type(value).__name__)


def _check_kind(kind: str, value: Any, label: str) -> None:
    ok = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "duration": isinstance(value, str | int | float) and not isinstance(value, bool),
        "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "table": isinstance(value, dict)
        and all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in value.values()),
    }[kind]
    if not ok:
        expected = {
            "integer": "an integer", "boolean": "a boolean (true/false)", "string": "a string",
            "duration": 'a duration ("5m") or a number of seconds', "list": "an array of strings",
            "table": 'a table of route prefix = ["network", ...]',
        }[kind]
        raise ConfigError(f"{label}: expected {expected}, got {_type_name(value)}")


def _typed(name: str, value: Any, label: str) -> Any:
    kind = field_kind(name)
    if name == "debug" and isinstance(value, bool):
        return int(value)
    _check_kind(kind, value, label)
    return value


def _validation_text(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """One line per problem: `<source>: <key>: <message>`."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        name = loc[0] if loc else ""
        if name == "model_defaults":
            key = f'models."{loc[1]}".{loc[2]}' if len(loc) >= 3 else MODELS_TABLE
            where = sources.get(key, sources.get(name, "file"))
        else:
            key = file_key(name) if sources.get(name, "").startswith("file") else name
            where = sources.get(name, "default")
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        out.append(f"{where.removeprefix('file ')}: {key}: {message}")
    return "\n".join(out) or str(exc)


# Line numbers ---------------------------------------------------------------------------------
_KEY_LINE = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
                       r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'))*)\s*=""")
_TABLE_LINE = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(?:#.*)?$")
_KEY_PART = re.compile(r"""\s*([A-Za-z0-9_-]+|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def split_key(text: str) -> tuple[str, ...]:
    """`models."llama3:8b".num_ctx` -> ("models", "llama3:8b", "num_ctx")."""
    parts = []
    for match in _KEY_PART.finditer(text):
        bare, basic, literal = match.groups()
        if basic is not None:
            parts.append(basic.encode().decode("unicode_escape"))
        elif literal is not None:
            parts.append(literal)
        else:
            parts.append(bare)
    return tuple(parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of each table header and `key = value` line, by full key path."""
    out: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _TABLE_LINE.match(line)
        if header and not _KEY_LINE.match(line):
            table = split_key(header.group(1))
            for i in range(1, len(table) + 1):
                out.setdefault(table[:i], number)
            continue
        match = _KEY_LINE.match(line)
        if match:
            path = table + split_key(match.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                out.setdefault(path[:i], number)
            rest = line[match.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
    return out


# `corral config show` ---------------------------------------------------------------------------
def describe(loaded: LoadedConfig) -> list[tuple[str, str, str]]:
    """(key, value, source) rows for every setting and per-model value; secrets are masked."""
    s = loaded.settings
    rows: list[tuple[str, str, str]] = []
    for name in Settings.model_fields:
        if name in FILE_ONLY_FIELDS:
            continue
        value = s.models_dir if name == "models" else getattr(s, name)
        shown = "****" if name in SECRET_FIELDS and value else _show(value)
        rows.append((file_key(name), shown, loaded.sources.get(name, "default")))
    for model, section in s.model_defaults.items():
        for key, value in section.model_dump(exclude_none=True).items():
            label = f'models."{model}".{key}'
            rows.append((label, _show(value), loaded.sources.get(label, "file")))
    return rows


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} = {_show(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
