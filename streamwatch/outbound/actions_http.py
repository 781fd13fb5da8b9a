"""The HTTP calls behind actions: nginx-rtmp's control module, SRS's HTTP API, and the named templates.

Thin I/O around :mod:`streamwatch.outbound.actions`: each call returns an
:class:`~streamwatch.outbound.actions.Outcome` (whether the origin did it, what was acted on, its
answer) or raises :class:`~streamwatch.errors.ActionError` when the server cannot be reached. Secrets
come from the environment when the call is made and are never logged or recorded.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from streamwatch.errors import ActionError
from streamwatch.outbound.actions import Outcome, Target, json_value, render, url_value
from streamwatch.outbound.actions_config import ActionsConfig, HttpActionConfig


async def call(action: str, backend: str, cfg: ActionsConfig, target: Target | None, fields: dict[str, object]) -> Outcome:
    """Perform ``action`` with ``backend`` (``nginx``, ``srs`` or ``http:<name>``)."""
    try:
        async with httpx.AsyncClient(timeout=cfg.timeout_s, follow_redirects=False) as client:
            if backend == "nginx":
                return await nginx_drop(client, cfg.nginx.url, target)
            if backend == "srs":
                return await srs_kick(client, cfg.srs.url, target)
            spec = cfg.named(backend.removeprefix("http:"))
            if spec is None:
                raise ActionError(f"no [[actions.http]] entry for {backend!r}")
            return await http_action(client, spec, fields)
    except httpx.HTTPError as e:
        raise ActionError(f"{backend}: {type(e).__name__}: {e}") from e


def _need(url: str | None, target: Target | None, what: str) -> tuple[str, Target]:
    if not url:
        raise ActionError(f"actions.{what}.url is not set")
    if target is None:
        raise ActionError("the publisher's app/name is unknown: set the stream's publisher = 'app/name'")
    return url.rstrip("/"), target


async def nginx_drop(client: httpx.AsyncClient, url: str | None, target: Target | None) -> Outcome:
    """``GET <control>/drop/publisher?app=..&name=..``: nginx-rtmp answers the number of sessions dropped."""
    base, tgt = _need(url, target, "nginx")
    r = await client.get(f"{base}/drop/publisher", params={"app": tgt.app, "name": tgt.name})
    body = r.text.strip()[:200]
    if r.status_code != 200:
        return Outcome(False, str(tgt), f"nginx control: HTTP {r.status_code} {body}".strip())
    dropped = int(body) if body.isdigit() else 0
    return Outcome(dropped > 0, str(tgt), f"nginx control: {dropped} publisher(s) dropped")


async def srs_kick(client: httpx.AsyncClient, url: str | None, target: Target | None) -> Outcome:
    """Find the publishing client of app/name in ``GET /api/v1/streams/``, then ``DELETE /api/v1/clients/{id}``."""
    base, tgt = _need(url, target, "srs")
    r = await client.get(f"{base}/api/v1/streams/", params={"count": "1000"})
    if r.status_code != 200:
        return Outcome(False, str(tgt), f"SRS: HTTP {r.status_code} listing streams")
    try:
        streams: list[dict[str, Any]] = r.json().get("streams") or []
    except ValueError as e:
        raise ActionError(f"SRS: the streams list is not JSON: {e}") from e
    cid = next(
        (
            (s.get("publish") or {}).get("cid")
            for s in streams
            if s.get("app") == tgt.app and s.get("name") == tgt.name and (s.get("publish") or {}).get("active")
        ),
        None,
    )
    if not cid:
        return Outcome(False, str(tgt), "SRS: no active publisher of this stream")
    r = await client.delete(f"{base}/api/v1/clients/{cid}")
    code = _srs_code(r)
    ok = r.status_code == 200 and code == 0
    return Outcome(ok, f"{tgt} (client {cid})", f"SRS: HTTP {r.status_code}, code {code}")


def _srs_code(r: httpx.Response) -> int | None:
    try:
        code = r.json().get("code")
    except ValueError:
        return None
    return code if isinstance(code, int) else None


async def http_action(client: httpx.AsyncClient, spec: HttpActionConfig, fields: dict[str, object]) -> Outcome:
    """A named template: URL (fields URL-quoted), body (fields as JSON values), the secret in a header."""
    url = render(spec.url, fields, url_value)
    headers = {"Content-Type": spec.content_type} if spec.body else {}
    if spec.secret_env is not None:
        secret = os.environ.get(spec.secret_env)
        if not secret:
            raise ActionError(f"{spec.name}: the environment variable {spec.secret_env} (its secret) is not set")
        headers[spec.secret_header] = spec.secret_prefix + secret
    body = render(spec.body, fields, json_value).encode() if spec.body else None
    r = await client.request(spec.method, url, content=body, headers=headers)
    shown = url.split("?", 1)[0]
    return Outcome(200 <= r.status_code < 300, f"{spec.method} {shown}", f"HTTP {r.status_code} {r.text.strip()[:200]}".strip())
