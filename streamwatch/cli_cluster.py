"""``streamwatch worker`` and ``streamwatch gateway``: the two roles of cluster mode (see README "Cluster")."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from streamwatch.errors import ConfigError

logger = logging.getLogger("streamwatch")


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    from streamwatch.cli_run import run_overrides

    over = run_overrides(a)
    cluster: dict[str, Any] = {}
    if a.nats:
        cluster["nats"] = [u for item in a.nats for u in item.split(",") if u]
    if getattr(a, "worker_id", None):
        cluster["worker_id"] = a.worker_id
    if getattr(a, "capacity", None) is not None:
        cluster["capacity"] = a.capacity
    if cluster:
        over["cluster"] = cluster
    return over


def _serve(role: Any, a: argparse.Namespace) -> int:
    from streamwatch.cli import _setup_logging
    from streamwatch.cli_run import run_until_stopped
    from streamwatch.config import load_settings

    settings = load_settings(a.config, _overrides(a))
    _setup_logging(settings.log_level)
    if not settings.cluster.nats:
        raise ConfigError("cluster mode needs NATS: give --nats nats://host:4222 or [cluster] nats = [...] in the config")
    if settings.streams:
        logger.warning("[[streams]] in the config are ignored in cluster mode: add them with `streamwatch streams add` on a gateway")
    node = role(settings)

    def announce() -> str:
        where = f" serving {node.server.url}" if getattr(node, "server", None) is not None else f" ({node.id})"
        return f"{a.role} ready{where}"

    asyncio.run(run_until_stopped(node, announce))
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    if a.serve:
        from streamwatch.cluster.serving import ServingWorker

        return _serve(ServingWorker, a)
    from streamwatch.cluster.worker import ClusterWorker

    return _serve(ClusterWorker, a)


def cmd_gateway(a: argparse.Namespace) -> int:
    from streamwatch.cluster.gateway import Gateway

    return _serve(Gateway, a)


def add_parsers(sub: Any) -> None:
    """``worker`` and ``gateway`` subcommands on the main parser's ``sub``."""
    for role, text in (
        ("worker", "cluster worker: claim streams (leases in NATS JetStream), analyse them, publish events"),
        ("gateway", "cluster gateway: follow the cluster's events and serve /ws, the overlay, console and reports"),
    ):
        p = sub.add_parser(role, help=text)
        p.add_argument("-c", "--config", type=Path, help="TOML config file ([cluster], [analysis], [server], …)")
        p.add_argument("--nats", action="append", metavar="URL[,URL]", help="NATS server URL(s) (cluster.nats; repeatable)")
        p.add_argument("--data", type=Path, help="data directory (this process's own store)")
        p.add_argument("--policy", type=Path, help="policy file (default models/policy.toml)")
        if role == "worker":
            p.add_argument("--worker-id", help="this worker's name (default: host name and pid)")
            p.add_argument("--capacity", type=int, help="streams this worker runs at most (default 8)")
            p.add_argument(
                "--serve", action="store_true", help="also be a gateway (/ws, overlay, console, reports; its store in DATA/gateway)"
            )
            p.set_defaults(func=cmd_worker)
        else:
            p.set_defaults(func=cmd_gateway)
        serving = "" if role == "gateway" else " (with --serve)"
        p.add_argument("--host", help=f"server address{serving} (default 127.0.0.1)")
        p.add_argument("--port", type=int, help=f"server port{serving} (default 8765)")
        p.add_argument("--api-port", type=int, help=f"HTTP API port{serving} (POST /streams, …; default: off)")
        p.add_argument("--token", action="append", metavar="ROLE:SECRET", help=f"accept this token for ROLE{serving} (repeatable)")
        p.set_defaults(role=role, open_timeout_s=None, read_timeout_s=None, max_retries=None, decode=None, hwaccel=None)
