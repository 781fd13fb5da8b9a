"""A local cluster for tests and ``tools/bench/cluster.py``: worker and gateway processes, moderator clients.

Workers and gateways are real ``python -m streamwatch worker|gateway`` processes (so ``kill -9``
is real); the moderator is a real WebSocket client in a thread that records every event it gets,
with its arrival time, and can reconnect with ``since``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats_cluster import free_port, wait_port
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ADMIN, MODERATOR = "adm-secret", "mod-secret"


def write_config(
    path: Path,
    nats: list[str],
    *,
    lease_ttl_s: float = 3.0,
    renew_s: float = 0.5,
    analyzers: tuple[str, ...] = ("qr",),
    name: str = "sw",
    rebalance_after_s: float = 2.0,
    cluster_extra: str = "",
    extra: str = "",
) -> Path:
    """A cluster config: QR only (cheap on 2 cores), short leases, admin + moderator tokens.
    ``cluster_extra``: more TOML lines in ``[cluster]``; ``extra``: more TOML at the end."""
    quoted = ", ".join(json.dumps(u) for u in nats)
    path.write_text(
        f"""log_level = "INFO"
[analysis]
analyzers = {json.dumps(list(analyzers))}
threads = 1
[analysis.encoder]
[cluster]
name = "{name}"
nats = [{quoted}]
lease_ttl_s = {lease_ttl_s}
renew_s = {renew_s}
rebalance_after_s = {rebalance_after_s}
connect_timeout_s = 20
{cluster_extra}
[[server.tokens]]
name = "admin"
role = "admin"
secret = "{ADMIN}"
[[server.tokens]]
name = "desk"
role = "moderator"
secret = "{MODERATOR}"
{extra}
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Node:
    """One ``streamwatch worker`` or ``gateway`` process."""

    role: str
    name: str
    config: Path
    data: Path
    log: Path
    port: int | None = None  # gateways and serving workers
    proc: subprocess.Popen[bytes] | None = None
    serve: bool = False  # a worker that is also a gateway (--serve)
    _log_start: int = 0  # where this run's log begins

    def start(self) -> None:
        cmd = [sys.executable, "-m", "streamwatch", self.role, "-c", str(self.config), "--data", str(self.data)]
        if self.role == "worker":
            cmd += ["--worker-id", self.name]
        if self.role == "gateway" or self.serve:
            cmd += ["--serve"] if self.serve else []
            if self.port is None:
                self.port = free_port()
            cmd += ["--port", str(self.port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        if self.port is not None:
            wait_port(self.port, 90)

    def wait_ready(self, timeout: float = 90) -> None:
        """Until this run of the process has said ``streamwatch: <role> ready`` (log since its start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if f"streamwatch: {self.role} ready" in self.log.read_bytes()[self._log_start :].decode(errors="replace"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {timeout:g}s:\n{self.tail()}")

    def kill(self) -> None:
        """``kill -9``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a worker drains), then wait; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Rig:
    root: Path
    config: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(self, role: str, name: str, *, serve: bool = False, config: Path | None = None) -> Node:
        node = Node(role, name, config or self.config, self.root / name, self.root / f"{name}.log", serve=serve)
        self.nodes[name] = node
        node.start()
        return node

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "worker"]

    def wait_ready(self, timeout: float = 90) -> None:
        """Until every node has said it is ready (workers registered, gateways serving)."""
        for n in self.nodes.values():
            n.wait_ready(timeout)

    def stop(self) -> None:
        for n in self.nodes.values():
            n.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.tail()}" for n in self.nodes.values())


def request(url: str, msg: dict[str, Any], token: str = ADMIN, timeout: float = 30) -> dict[str, Any]:
    """One admin request over /ws; the answer with the same ref (or an error)."""
    ref = f"r{time.monotonic_ns()}"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=timeout) as ws:
        ws.recv(timeout)  # hello
        ws.send(json.dumps({**msg, "ref": ref}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(max(0.1, deadline - time.monotonic())))
            if frame.get("ref") == ref:
                return dict(frame)
    raise TimeoutError(f"no answer to {msg['type']}")


class Moderator:
    """A moderator client in a thread: every event received, with its arrival time; resumes with ``since``."""

    def __init__(self, url: str, channels: tuple[str, ...] = ("alerts", "health", "reviews")) -> None:
        self.url = url
        self.channels = channels
        self.events: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.lock = threading.Lock()
        self._ws: ClientConnection | None = None
        self._thread: threading.Thread | None = None
        self.connects = 0

    @property
    def last_id(self) -> int | None:
        with self.lock:
            return max((e["id"] for e in self.events), default=None)

    def start(self, since: int | None = None) -> None:
        ws = connect(self.url, additional_headers={"Authorization": f"Bearer {MODERATOR}"}, open_timeout=30, max_size=None).__enter__()
        ws.recv(30)  # hello
        sub: dict[str, Any] = {"type": "subscribe", "channels": list(self.channels), "ref": "sub"}
        if since is not None:
            sub["since"] = since
        ws.send(json.dumps(sub))
        self._ws = ws
        self.connects += 1
        self._thread = threading.Thread(target=self._read, args=(ws,), daemon=True)
        self._thread.start()

    def _read(self, ws: ClientConnection) -> None:
        try:
            for raw in ws:
                frame = json.loads(raw)
                now = time.time()
                batch = frame["events"] if frame.get("type") == "batch" else [frame] if "id" in frame and "v" not in frame else []
                with self.lock:
                    for ev in batch:
                        self.events.append(ev)
                        self.arrivals.append(now)
        except (ConnectionClosed, OSError):
            return

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._thread is not None:
            self._thread.join(10)

    def reconnect(self) -> None:
        """Close, then subscribe again with ``since`` = the highest id seen (retrying until the gateway answers)."""
        self.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.start(since=self.last_id)
                return
            except (OSError, TimeoutError, ConnectionClosed):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            evs = self.snapshot()
            if pred(evs):
                return evs
            time.sleep(0.1)
        raise AssertionError(f"{what}: not seen within {timeout:g}s on {self.url}")
