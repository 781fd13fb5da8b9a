"""Validation errors a person can act on: the key, where its value came from (the TOML file's line,
the ``STREAMWATCH_*`` variable or a command-line option), and for an unknown key the nearest known
one ("did you mean read_timeout_s?"). Pure: the caller reads the file and the environment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

Loc = tuple[int | str, ...]


def env_names(prefix: str, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[Loc, str]:
    """Where values came from, by key path: a ``STREAMWATCH_A__B`` variable, or ``"option"`` for a
    command-line override (which wins over the environment, which wins over the file)."""
    out: dict[Loc, str] = {}
    environ = os.environ if environ is None else environ
    for name in environ:
        if prefix and name.lower().startswith(prefix.lower()):
            out[tuple(name[len(prefix) :].lower().split("__"))] = name
    for path in _paths(overrides):
        out[path] = "option"
    return out


def _paths(values: Mapping[str, Any], base: Loc = ()) -> list[Loc]:
    paths: list[Loc] = []
    for k, v in values.items():
        here = (*base, k)
        paths.extend(_paths(v, here) if isinstance(v, Mapping) and v else [here])
    return paths


def _source(loc: Loc, sources: Mapping[Loc, str]) -> str | None:
    """The variable (or "option") that set the value at ``loc``: the longest key path that starts it."""
    keys = tuple(str(p).lower() for p in loc if not isinstance(p, int))
    for n in range(len(keys), 0, -1):
        if (hit := sources.get(keys[:n])) is not None:
            return hit
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in ``X``, ``list[X]``, ``X | None``, ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) is not None else ():
        if (found := _model_in(arg)) is not None:
            return found
    return None


def did_you_mean(model: type[BaseModel], loc: Loc) -> str | None:
    """The known key nearest to the unknown last key of ``loc`` (a typo), or None."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current is not None else None
        current = _model_in(field.annotation) if field is not None else None
    if current is None or not loc or isinstance(loc[-1], int):
        return None
    close = difflib.get_close_matches(loc[-1], list(current.model_fields), n=1, cutoff=0.7)
    return close[0] if close else None


def format_validation_error(
    e: ValidationError, where: str, text: str = "", *, model: type[BaseModel] | None = None, sources: Mapping[Loc, str] | None = None
) -> str:
    """One line per error: ``key (line N)`` in ``where``, or ``key (from VARIABLE)``, with a near key for a typo."""
    lines: list[str] = []
    kinds: set[str] = set()  # where the values in error came from
    for err in e.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(root)"
        source = _source(loc, sources) if sources else None
        near = did_you_mean(model, loc) if model is not None and err["type"] == "extra_forbidden" else None
        if source == "option":
            at = " (a command-line option)"
            kinds.add("command-line options")
        elif source is not None:
            at = f" (from the environment variable {source})"
            kinds.add("the environment")
            if near is not None:  # the variable to set instead
                near = source[: len(source) - len(str(loc[-1]))] + near.upper()
        else:
            line = locate_key(text, loc) if text else None
            at = f" (line {line})" if line else ""
            kinds.add(where)
        hint = f" (did you mean {near}?)" if near else ""
        lines.append(f"  {dotted}{at}: {err['msg']}{hint}")
    head = " and ".join(sorted(kinds)) if where not in kinds and kinds else where
    return "\n".join([f"invalid configuration in {head}:", *lines])


def locate_key(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number of the key at ``loc`` in a TOML text (tables and arrays of tables).

    ``("rule", 2, "when", "qr")`` finds ``qr =`` under the ``[rule.when]`` that follows the third
    ``[[rule]]``.
    """
    keys = [str(p) for p in loc if not isinstance(p, int)]
    if not keys:
        return None
    index = next((p for p in loc if isinstance(p, int)), None)
    array = str(loc[0]) if index is not None and len(loc) > 1 and loc[1] == index else None
    lines = text.splitlines()
    table_re = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    key_re = re.compile(r"^\s*(\"?)" + re.escape(keys[-1]) + r"\1\s*=")
    table = ".".join(keys[:-1])
    current = ""
    seen: dict[str, int] = {}

    def in_item() -> bool:
        return array is None or seen.get(array, 0) - 1 == index

    for n, line in enumerate(lines, 1):
        m = table_re.match(line)
        if m:
            current = m.group(1)
            if line.lstrip().startswith("[["):
                seen[current] = seen.get(current, 0) + 1
            if current == ".".join(keys) and in_item():
                return n
            continue
        if key_re.match(line) and (current == table or (not table and current == "")) and in_item():
            return n
    # a dotted key at top level: ingest.read_timeout_s = ...
    dotted = re.compile(r"^\s*" + re.escape(".".join(keys)) + r"\s*=")
    return next((n for n, line in enumerate(lines, 1) if dotted.match(line)), None)
