"""The commented example configuration (``streamwatch.example.toml``, ``streamwatch init``), rendered
from :class:`~streamwatch.config.Settings` itself so it names every section and field with its
description and default, and cannot drift from the code. Pure: returns text.

Fields whose default is unset, or a file inside this checkout (``models/…``), are written commented
out (with an example value where one helps); list-of-table sections get example entries.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from streamwatch.config import Settings

_CHECKOUT = Path(__file__).resolve().parent.parent

HEADER = """\
# streamwatch configuration: every section and field, with its default.
#
# Check it:  streamwatch check-config streamwatch.toml
# Run it:    streamwatch run -c streamwatch.toml
#
# Priority: this file < STREAMWATCH_* environment (nested with __, e.g.
# STREAMWATCH_INGEST__READ_TIMEOUT_S=3) < command-line options. Unknown keys are errors.
# Lines "# key = value" are unset, or default to a file of this checkout: uncomment to set them.
# Relative paths are relative to the directory streamwatch is started from.
"""

# example values for fields that are unset by default (shown commented out)
_EXAMPLES: dict[str, Any] = {
    "ingest.max_retries": 10,
    "streams.every_s": 2.0,
    "streams.policy": "models/policy.toml",
    "streams.publisher": "live/show",
    "actions.warn": "ban_room",
    "actions.nginx.url": "http://127.0.0.1:8080/control",
    "actions.srs.url": "http://127.0.0.1:1985",
    "server.api_port": 8766,
    "server.allowed_origins": ["http://127.0.0.1:8765"],
    "analysis.encoder.path": "models/encoders/clip-vit-base-patch32",
    "analysis.encoder.variant": "int8",
    "cluster.worker_id": "worker-1",
    "mqtt.host": "127.0.0.1",
    "mqtt.username": "streamwatch",
    "mqtt.password_env": "STREAMWATCH_MQTT_PASSWORD",
    "webhooks.evidence_base_url": "https://streamwatch.example.com",
    "webhooks.min_severity": "high",
}

# list-of-table sections: (example entries, written live or commented out)
_TABLES: dict[str, tuple[list[dict[str, Any]], bool]] = {
    "streams": ([{"id": "main", "source": "rtmp://127.0.0.1/live/show"}], True),
    "server.tokens": (
        [
            {"name": "obs", "role": "overlay", "secret": "change-me-overlay"},
            {"name": "desk", "role": "moderator", "secret": "change-me-moderator"},
            {"name": "danmaku", "role": "submitter", "secret": "change-me-danmaku", "relay": True},
        ],
        False,
    ),
    "vlm.questions": ([{"id": "exposure", "question": "Is anyone shown with exposed private parts?", "kind": "bool"}], False),
    "webhooks": (
        [{"name": "backend", "url": "https://backend.example.com/streamwatch", "secret": "env:STREAMWATCH_WEBHOOK_SECRET"}],
        False,
    ),
    "actions.http": (
        [
            {
                "name": "ban_room",
                "url": "https://platform.example/api/rooms/{name}/ban",
                "body": '{"room": {name}, "reason": {message}, "alert": {alert_id}}',
                "secret_env": "PLATFORM_API_TOKEN",
            }
        ],
        False,
    ),
}

_DICT_EXAMPLES: dict[str, dict[str, Any]] = {
    "vlm.roles": {"compliance": ["qwen3-vl-8b", "qwen3-vl-4b", "local"], "reply": ["qwen3-vl-4b", "local"], "qa": ["qwen3-vl-8b", "local"]},
    "cluster.vlm_budget": {"qwen3-vl-8b": 8},
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _toml(value.value)
    if isinstance(value, Path):
        return _toml(str(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class of ``list[Model]`` / ``list[Model] | None`` annotations."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for m in (_model_of(a) for a in args) if m), None)
    if typing.get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _comment(info: FieldInfo) -> str:
    return f"# {info.description}" if info.description else ""


def _scalar(lines: list[str], key: str, dotted: str, info: FieldInfo, value: Any) -> None:
    lines.append(_comment(info))
    if isinstance(value, Path) and value.is_absolute() and value.is_relative_to(_CHECKOUT):
        lines.append(f"# {key} = {_toml(value.relative_to(_CHECKOUT))}   # default: this checkout's file")
    elif value is None:
        example = _EXAMPLES.get(dotted)
        lines.append(f"# {key} = {_toml(example)}" if example is not None else f"# {key} =   # unset by default")
    else:
        lines.append(f"{key} = {_toml(value)}")


def _section(lines: list[str], model: BaseModel | type[BaseModel], prefix: str) -> None:
    cls = model if isinstance(model, type) else type(model)
    fields = cls.model_fields
    values = {k: getattr(model, k) if not isinstance(model, type) else f.get_default(call_default_factory=True) for k, f in fields.items()}
    subsections: list[tuple[str, FieldInfo]] = []
    for key, info in fields.items():
        dotted = f"{prefix}.{key}" if prefix else key
        value = values[key]
        if isinstance(value, BaseModel | dict) or dotted in _TABLES:
            subsections.append((key, info))
        else:
            _scalar(lines, key, dotted, info, value)
    for key, info in subsections:
        dotted = f"{prefix}.{key}" if prefix else key
        value = values[key]
        lines.append("")
        if dotted in _TABLES:
            _table_array(lines, dotted, info)
        elif isinstance(value, dict):
            lines.append(f"[{dotted}]  {_comment(info)}")
            for k, v in (value or _DICT_EXAMPLES.get(dotted, {})).items():
                lines.append(f"{'' if value else '# '}{k} = {_toml(v)}")
        else:
            lines.append(f"[{dotted}]  {_comment(info)}")
            _section(lines, value, dotted)


def _table_array(lines: list[str], dotted: str, info: FieldInfo) -> None:
    entries, live = _TABLES[dotted]
    sub = _model_of(info.annotation)
    assert sub is not None, dotted
    mark = "" if live else "# "
    lines.append(f"{_comment(info)}")
    for n, entry in enumerate(entries):
        lines.append(f"{mark}[[{dotted}]]")
        for key, field in sub.model_fields.items():
            if n == 0:
                lines.append(_comment(field))
            if key in entry:
                lines.append(f"{mark}{key} = {_toml(entry[key])}")
            elif n == 0:
                default = field.get_default(call_default_factory=True)
                example = default if default is not None else _EXAMPLES.get(f"{dotted}.{key}")
                if example is not None:
                    lines.append(f"# {key} = {_toml(example)}")


def render_example() -> str:
    """The whole example configuration as TOML text (valid: ``check-config`` accepts it as is)."""
    lines: list[str] = []
    _section(lines, Settings.model_construct(), "")
    body = "\n".join(lines).replace("\n\n\n", "\n\n").strip("\n")
    return HEADER + "\n" + body + "\n"
