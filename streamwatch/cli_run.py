"""``streamwatch run`` and ``streamwatch analyze``: what starts the daemon, and what is checked first.

Before models load or a port is bound, every configured source is checked (an unsupported scheme, no
host, a missing file: one line, exit 2), and a run with nothing to watch and no way to add a stream
is refused with what is missing. A run whose every stream failed exits 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamwatch.errors import ConfigError, EventsError

if TYPE_CHECKING:
    from streamwatch.config import Settings

logger = logging.getLogger("streamwatch")

EXIT_REFUSED = 2  # refused before anything started (as argparse does for a bad option)


def run_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """Settings overrides from the options of ``run``, ``worker`` and ``gateway``."""
    from streamwatch.cli import _ingest_overrides

    over: dict[str, Any] = _ingest_overrides(a)
    if getattr(a, "source", None):
        over["streams"] = [{"id": a.id, "source": a.source, "listen": a.listen}]
    server: dict[str, Any] = {}
    if getattr(a, "host", None):
        server["host"] = a.host
    if getattr(a, "port", None) is not None:
        server["port"] = a.port
    if getattr(a, "api_port", None) is not None:
        server["api_port"] = a.api_port
    if getattr(a, "token", None):
        tokens = []
        for item in a.token:
            role, sep, secret = item.partition(":")
            if not sep:
                raise ConfigError(f"--token {item!r}: use ROLE:SECRET (roles: overlay, moderator, submitter, admin)")
            tokens.append({"name": role, "role": role, "secret": secret})
        server["tokens"] = tokens
    if server:
        over["server"] = server
    if getattr(a, "data", None):
        over["data_dir"] = a.data
    if getattr(a, "policy", None):
        over.setdefault("analysis", {})["policy"] = a.policy
    return over


def check_streams(settings: Settings) -> None:
    """Every configured source parsed and, for a local file, found on disk; BadSource naming the stream."""
    from streamwatch.ingest.preflight import check_source, check_tools

    for s in settings.streams:
        check_tools(check_source(s.source, listen=s.listen, stream=s.id), settings.ingest, stream=s.id)


def missing_for_run(settings: Settings, config: Path | None) -> str | None:
    """What a daemon with no stream lacks: nothing to watch and no admin token to add a stream; None when it can work."""
    from streamwatch.config import Role

    if settings.streams or (settings.data_dir / "streams.json").exists():
        return None
    if any(t.role is Role.ADMIN for t in settings.server.tokens):
        return None
    where = f"[[streams]] in {config}" if config else "a config with [[streams]] (`streamwatch init` writes one) and -c FILE"
    return (
        f"nothing to watch: no stream is configured and no admin token can add one. Give --source URL (or {where}), "
        "or --token admin:SECRET to add streams later with `streamwatch streams add`"
    )


def token_warning(settings: Settings, config: Path | None) -> str | None:
    """What a config without tokens means (every client refused) and how to add one; None when it has some."""
    if settings.server.tokens:
        return None
    where = f"uncomment a [[server.tokens]] in {config}" if config else "add [[server.tokens]] to a config"
    return (
        f"no tokens: every WebSocket client (overlay, console, `streamwatch streams`) will be refused; "
        f"{where}, or give `run --token ROLE:SECRET` (roles: overlay, moderator, submitter, admin)"
    )


def cmd_run(a: argparse.Namespace) -> int:
    import asyncio

    from streamwatch.app import Daemon
    from streamwatch.cli import _setup_logging
    from streamwatch.config import Role, load_settings

    settings = load_settings(a.config, run_overrides(a))
    if settings.cluster.nats:
        raise ConfigError("cluster.nats is set: `run` is the single box; start `streamwatch worker` and `streamwatch gateway` instead")
    check_streams(settings)  # before models load, a port is bound or a data folder is made
    if (missing := missing_for_run(settings, a.config)) is not None:
        print(f"streamwatch: error: {missing}", file=sys.stderr)
        return EXIT_REFUSED
    _setup_logging(settings.log_level)
    if not settings.streams and not (settings.data_dir / "streams.json").exists():
        admin = next(t.name for t in settings.server.tokens if t.role is Role.ADMIN)
        logger.warning("no streams configured yet: add one with `streamwatch streams add ID SOURCE --token SECRET` (token %s)", admin)
    if (warning := token_warning(settings, a.config)) is not None:
        logger.warning("%s", warning)
    daemon = Daemon(settings)

    def announce() -> str | None:
        return None if daemon.server is None else f"serving {daemon.server.url} (/ws, /overlay, /healthz, /metrics)"

    asyncio.run(run_until_stopped(daemon, announce))
    if failed := daemon.all_failed():
        print(f"streamwatch: error: every stream failed ({', '.join(failed)}): nothing was watched (see the log above)", file=sys.stderr)
        return 1
    return 0


async def run_until_stopped(node: Any, announce: Callable[[], str | None]) -> None:
    """Run ``node`` (``run()``, ``stop()``, ``ready`` event) until it returns; SIGINT/SIGTERM call
    ``stop``. Once ready, ``streamwatch: <announce()>`` goes to stderr (nothing when it gives None)."""
    import asyncio

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop)
    task = asyncio.create_task(node.run())
    ready = asyncio.create_task(node.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if node.ready.is_set() and (line := announce()) is not None:
        print(f"streamwatch: {line}", file=sys.stderr, flush=True)
    await task


def cmd_analyze(a: argparse.Namespace) -> int:
    import tempfile
    from urllib.parse import urlsplit

    from streamwatch.cli_checks import report_target
    from streamwatch.ingest.preflight import check_source
    from streamwatch.ingest.url import source_scheme

    spec = check_source(a.file)  # before the work: a bad source or a bad name fails at once
    if spec.live:
        raise ConfigError(f"analyze reads a recording, and {spec.redacted} is a live source: watch it with `streamwatch run --source`")
    remote = urlsplit(spec.url).path if source_scheme(spec.url) else None  # http(s)://…: a report named after the file
    out, fmt = report_target(a.output, a.format, Path(Path(remote).name) if remote is not None else Path(spec.url))
    if a.data is not None:
        return _analyze(a, spec.url, a.data, out, fmt)
    with tempfile.TemporaryDirectory(prefix="streamwatch-analyze-", ignore_cleanup_errors=True) as tmp:
        return _analyze(a, spec.url, Path(tmp), out, fmt)


def _analyze(a: argparse.Namespace, source: str, data: Path, out: Path, fmt: str) -> int:
    import asyncio
    from urllib.parse import urlsplit

    from tqdm import tqdm

    from streamwatch.app import Daemon
    from streamwatch.cli import _setup_logging
    from streamwatch.config import load_settings
    from streamwatch.events.store import EventStore
    from streamwatch.ingest.probe import probe
    from streamwatch.ingest.url import parse_source, source_scheme
    from streamwatch.report import collect, render

    over: dict[str, Any] = {"streams": [{"id": a.id, "source": source}], "data_dir": data}
    if a.policy:
        over["analysis"] = {"policy": a.policy}
    settings = load_settings(a.config, over)
    _setup_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    duration = probe(parse_source(source), settings.ingest).duration_s or 0.0
    total = round(duration, 1) or None
    name = Path(urlsplit(source).path if source_scheme(source) else source).name
    bar = tqdm(total=total, unit="s", desc=name, disable=a.quiet, file=sys.stderr)

    def progress(_stream: str, offset: float) -> None:
        bar.update(round(offset, 1) - bar.n)

    daemon = Daemon(settings, serve=False, on_sample=progress)
    asyncio.run(daemon.run())
    if total is not None and not daemon.all_failed():  # read to its end: the last sample is before the container's end
        bar.update(total - bar.n)
    bar.close()
    sys.stderr.flush()
    store = EventStore(data, retention_days=None, retention_mb=None)
    try:
        inputs = collect(store, a.id, embed_images=fmt == "html")
    finally:
        store.close()
    alerts = [e for e in inputs.events if e.TYPE == "alert"]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(inputs, fmt, settings.ui), encoding="utf-8")
    except OSError as e:
        raise EventsError(f"cannot write the report to {out}: {e.strerror or e} (choose another place with -o)") from e
    kept = f"events and evidence frames kept in {data}" if a.data else "events not kept: add --data DIR to keep them"
    n = len(alerts)
    print(f"{n} alert{'' if n == 1 else 's'} in {source}; {fmt} report: {out.resolve()}; {kept}")
    return 0


def add_parsers(sub: Any) -> None:
    """The ``run`` and ``analyze`` sub-commands."""
    ru = sub.add_parser("run", help="run the daemon: watch streams, raise alerts, serve /ws and the overlay")
    ru.add_argument("-c", "--config", type=Path, help="TOML config file with [[streams]], [server], [analysis]")
    ru.add_argument("--source", help="one stream: rtmp://…, rtsp://…, http(s)://….m3u8 or a file (with --listen: an rtmp:// address)")
    ru.add_argument("--id", default="main", help="stream id for --source (default: main)")
    ru.add_argument("--listen", action="store_true", help="be the RTMP endpoint OBS pushes to")
    ru.add_argument("--host", help="server address (default 127.0.0.1)")
    ru.add_argument("--port", type=int, help="server port (default 8765)")
    ru.add_argument("--api-port", type=int, help="HTTP API port for POST /vlm/infer (default: off)")
    ru.add_argument("--token", action="append", metavar="ROLE:SECRET", help="accept this token for ROLE (repeatable)")
    ru.add_argument("--data", type=Path, help="data directory (events, evidence)")
    ru.add_argument("--policy", type=Path, help="policy file (default models/policy.toml)")
    ru.add_argument("--realtime", action="store_true", help="pace file sources in real time, like a live show (ingest.realtime)")
    ru.set_defaults(func=cmd_run, open_timeout_s=None, read_timeout_s=None, max_retries=None, decode=None, hwaccel=None)

    an = sub.add_parser("analyze", help="run the analysis cascade on a recording as fast as possible, then write a report")
    an.add_argument("file", help="video file (a path, file:// or http(s):// URL)")
    an.add_argument("-o", "--output", type=Path, help="report file (.html, .json or .csv; default: FILE-report.html beside FILE)")
    an.add_argument("--format", choices=["html", "json", "csv"], help="report format (default: from the -o extension, else html)")
    an.add_argument("-c", "--config", type=Path, help="TOML config file ([analysis], [sampling])")
    an.add_argument("--id", default="recording", help="stream id in the report (default: recording)")
    an.add_argument("--data", type=Path, help="keep the events and evidence frames here (default: a temporary folder, removed)")
    an.add_argument("--policy", type=Path, help="policy file (default models/policy.toml)")
    an.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    an.set_defaults(func=cmd_analyze)
