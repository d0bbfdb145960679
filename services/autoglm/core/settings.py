"""Typed settings read from an optional YAML file and the environment.

Every app has one pydantic model of its settings. Values come from, in rising precedence:
the model's defaults, a YAML file (path in ``AUTOGLM_CONFIG``), and environment variables
named ``AUTOGLM_<APP>_<FIELD>`` (nested fields joined with ``__``). Validation happens once
at start; a bad value stops the app with a message naming the setting, not a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="AppSettings")


class SettingsError(Exception):
    """Raised when settings are missing or invalid; the message names each bad setting."""


class AppSettings(BaseModel):
    """Base for per-app settings: unknown keys are errors, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Environment prefix, e.g. ``AUTOGLM_GATEWAY_``; set by each subclass.
    env_prefix: ClassVar[str] = ""

    log_level: str = "INFO"


def _env_overrides(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(prefix) or key == prefix:
            continue
        path = key[len(prefix) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # YAML parsing gives env vars the same typing as the file: "8080" -> 8080,
        # "true" -> True, "[a, b]" -> list.
        node[path[-1]] = yaml.safe_load(value) if value != "" else ""
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from YAML (``AUTOGLM_CONFIG``) and environment; raise SettingsError."""
    env = os.environ if environ is None else environ
    prefix = cls.env_prefix
    data: dict[str, Any] = {}
    config_path = env.get("AUTOGLM_CONFIG")
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise SettingsError(f"AUTOGLM_CONFIG: file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"AUTOGLM_CONFIG: {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"AUTOGLM_CONFIG: {path} must hold a mapping")
        # One file may configure all apps: take the section named after this app.
        section = prefix.removeprefix("AUTOGLM_").rstrip("_").lower()
        data = dict(loaded.get(section, {}))
    try:
        data = _merge(data, _env_overrides(prefix, env))
    except yaml.YAMLError as exc:
        raise SettingsError(f"{prefix}*: unparsable value: {exc}") from None
    try:
        return cls(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            env_name = prefix + "__".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{field} ({env_name}): {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
