"""Does an answer follow the JSON schema that was asked for? Pure.

A server that enforces ``response_format`` returns exactly one JSON value that validates; one that
ignores it (``transformers serve`` answers 200 and logs ``Ignoring unsupported fields``) returns
whatever the model wrote. :func:`violations` checks the subset of JSON Schema streamwatch sends
(object properties/required/additionalProperties, type, enum, items, maxItems, minimum/maximum).
"""

from __future__ import annotations

import json

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "number": (int, float),
    "integer": (int,),
    "null": (type(None),),
}


def violations(value: object, schema: dict[str, object], where: str = "$") -> list[str]:
    """Why ``value`` does not follow ``schema`` (empty when it does)."""
    out: list[str] = []
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _TYPES:
        ok = isinstance(value, _TYPES[kind]) and not (kind in ("number", "integer") and isinstance(value, bool))
        if not ok:
            return [f"{where}: expected {kind}, got {type(value).__name__}"]
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        out.append(f"{where}: {value!r:.40} is not one of {enum}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (isinstance(lo, (int, float)) and value < lo) or (isinstance(hi, (int, float)) and value > hi):
            out.append(f"{where}: {value} is out of range")
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        for key in required if isinstance(required, list) else ():
            if key not in value:
                out.append(f"{where}: missing {key!r}")
        for key, item in value.items():
            sub = props.get(key)
            if isinstance(sub, dict):
                out.extend(violations(item, sub, f"{where}.{key}"))
            elif schema.get("additionalProperties") is False:
                out.append(f"{where}: unexpected key {key!r:.40}")
    if isinstance(value, list):
        items, most = schema.get("items"), schema.get("maxItems")
        if isinstance(most, int) and len(value) > most:
            out.append(f"{where}: {len(value)} items, at most {most}")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                out.extend(violations(item, items, f"{where}[{i}]"))
    return out


def strict_json(text: str) -> object:
    """The one JSON value ``text`` is (what a server enforcing a schema returns); ``ValueError`` otherwise."""
    return json.loads(text.strip())


def follows(text: str, schema_text: str) -> list[str]:
    """Why ``text`` is not a JSON answer that follows the schema (JSON text) — empty when it is."""
    try:
        value = strict_json(text)
    except ValueError:
        return ["the answer is not JSON"]
    return violations(value, json.loads(schema_text))


def instruction(schema_text: str) -> str:
    """The request for JSON by instruction, for a server that does not enforce ``response_format``."""
    return "\n\nAnswer with one JSON object only (no code fence, no text around it) that follows this JSON schema:\n" + schema_text
