"""Commands that talk to a running daemon over ``/ws`` with an admin token: ``streamwatch streams
add|remove|list`` (and the request helper ``models switch`` uses too). Kept apart so cli.py stays small.

Exit codes of ``streams``: 0 done, 2 refused by the daemon (its message on stderr: a bad stream, an
unknown or duplicate id, a non-admin token), 1 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from streamwatch.redact import mask_text, mask_url

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 1


class AdminRefused(Exception):
    """The daemon answered with an ``error`` frame (or refused the token at the handshake)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AdminUnreachable(Exception):
    """No WebSocket connection to the daemon (refused, wrong address, not a streamwatch /ws)."""


def admin_token(given: str | None) -> str:
    token = given or os.environ.get("STREAMWATCH_TOKEN")
    if not token:
        raise AdminRefused("no_token", "an admin token is needed: --token SECRET or STREAMWATCH_TOKEN")
    return token


def admin_request(url: str, token: str, message: dict[str, Any], done: frozenset[str], timeout: float) -> dict[str, Any]:
    """Send ``message`` (with a ``ref``) on a new connection to ``url`` and return the first answer to it
    whose type is in ``done``; intermediate answers (``accepted``) and other frames are skipped.

    Raises AdminRefused (an ``error`` answer, or 401/403 at the handshake), AdminUnreachable, or
    TimeoutError after ``timeout`` seconds without the answer.
    """
    from websockets.exceptions import InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    ref = f"cli-{message['type']}"
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as ws:
            ws.send(json.dumps({**message, "ref": ref}))
            while True:
                msg = json.loads(ws.recv(timeout=timeout))
                if msg.get("ref") != ref:
                    continue
                if msg.get("type") == "error":
                    raise AdminRefused(str(msg.get("code")), str(msg.get("message")))
                if msg.get("type") in done:
                    return msg  # type: ignore[no-any-return]
    except InvalidStatus as e:
        status = e.response.status_code
        if status in (401, 403):
            raise AdminRefused("forbidden", f"{url} refused the token (HTTP {status})") from e
        raise AdminUnreachable(f"cannot talk to {url}: {e}") from e
    except (OSError, WebSocketException) as e:
        raise AdminUnreachable(f"cannot talk to {url}: {e}") from e


def _run(a: argparse.Namespace, message: dict[str, Any], done: str) -> dict[str, Any] | int:
    """The answer, or the exit code after printing why there is none."""
    try:
        return admin_request(a.url, admin_token(a.token), message, frozenset({done}), a.timeout)
    except AdminRefused as e:
        print(f"streamwatch: refused ({e.code}): {mask_text(e.message)}", file=sys.stderr)
        return EXIT_REFUSED
    except AdminUnreachable as e:
        print(f"streamwatch: {mask_text(str(e))} (is the daemon running? --url)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TimeoutError:
        print(f"streamwatch: no answer from {a.url} within {a.timeout:g}s", file=sys.stderr)
        return EXIT_UNREACHABLE


def _cmd_add(a: argparse.Namespace) -> int:
    stream: dict[str, Any] = {"id": a.id, "source": a.source}
    if a.listen:
        stream["listen"] = True
    if a.every_s is not None:
        stream["every_s"] = a.every_s
    if a.policy is not None:
        stream["policy"] = str(a.policy.resolve())  # the daemon resolves relative paths from its own directory
    answer = _run(a, {"type": "add_stream", "stream": stream}, "stream_added")
    if isinstance(answer, int):
        return answer
    s = answer["stream"]
    print(f"added {s['id']} ({mask_url(str(s['source']))}): {s['state']}")
    return 0


def _cmd_remove(a: argparse.Namespace) -> int:
    answer = _run(a, {"type": "remove_stream", "stream": a.id}, "stream_removed")
    if isinstance(answer, int):
        return answer
    print(f"removed {answer['stream']}")
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    answer = _run(a, {"type": "list_streams"}, "streams")
    if isinstance(answer, int):
        return answer
    # the daemon masks sources; so does this side, whatever daemon answered (a console shows no secret)
    streams: list[dict[str, Any]] = [{**s, "source": mask_url(str(s.get("source", "")))} for s in answer["streams"]]
    if a.json:
        print(json.dumps(streams, ensure_ascii=False, indent=1))
        return 0
    if not streams:
        print("no streams")
        return 0
    w = max(2, *(len(str(s["id"])) for s in streams))
    cluster = any("worker" in s for s in streams)  # a cluster gateway says which worker runs each
    ww = max(6, *(len(str(s.get("worker") or "-")) for s in streams)) if cluster else 0
    head = f"{'worker':<{ww}}  " if cluster else ""
    print(f"{'id':<{w}}  {'state':<12}  {'origin':<7}  {head}source")
    for s in streams:
        col = f"{s.get('worker') or '-':<{ww}}  " if cluster else ""
        print(f"{s['id']:<{w}}  {s.get('state') or 'unknown':<12}  {s.get('origin', ''):<7}  {col}{s['source']}")
    return 0


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon's /ws address (default {DEFAULT_URL})")
    p.add_argument("--token", help="admin token (default: $STREAMWATCH_TOKEN)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer (default 60)")


def add_streams_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("streams", help="add, remove or list the streams of a running daemon (admin token); the set persists")
    st_sub = st.add_subparsers(dest="streams_command", metavar="ACTION", required=True)
    add = st_sub.add_parser("add", help="start watching a stream now (validated like a [[streams]] entry)")
    add.add_argument("id", help="stream id (letters, digits, _ . -; ≤ 64)")
    add.add_argument("source", help="rtmp://, rtsp://, http(s)://….m3u8 or a file path; with --listen an rtmp:// address")
    add.add_argument("--listen", action="store_true", help="be the RTMP endpoint a publisher pushes to")
    add.add_argument("--every-s", dest="every_s", type=float, help="sample every N seconds (default sampling.every_s)")
    add.add_argument("--policy", type=Path, help="policy file for this stream (default analysis.policy)")
    _connection_options(add)
    add.set_defaults(func=_cmd_add)
    rm = st_sub.add_parser("remove", help="stop watching a stream (its events and reports stay)")
    rm.add_argument("id", help="stream id")
    _connection_options(rm)
    rm.set_defaults(func=_cmd_remove)
    ls = st_sub.add_parser("list", help="the streams being watched: id, state, origin (config|runtime), source")
    ls.add_argument("--json", action="store_true", help="JSON output (the daemon's list)")
    _connection_options(ls)
    ls.set_defaults(func=_cmd_list)
