"""Command-line interface: ``streamwatch <command>`` (also ``python -m streamwatch``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from streamwatch import __version__
from streamwatch.errors import BadSource, ConfigError, EventsError, StreamwatchError

logger = logging.getLogger("streamwatch")


def _setup_logging(level: str) -> None:
    from streamwatch.redact import install_log_masking, install_uncaught_masking

    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    install_log_masking()  # every URL in every record masked, whoever logs it (PyAV/FFmpeg included)
    install_uncaught_masking()  # and in the traceback of an error that escapes
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per VLM request otherwise


def _ingest_overrides(a: argparse.Namespace) -> dict[str, Any]:
    ingest: dict[str, Any] = {}
    for key in ("open_timeout_s", "read_timeout_s", "max_retries", "decode", "hwaccel", "hls_variant"):
        value = getattr(a, key, None)
        if value is not None:
            ingest[key] = value
    if getattr(a, "realtime", False):
        ingest["realtime"] = True
    return {"ingest": ingest} if ingest else {}


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="rtmp://…, rtsp://…, http(s)://….m3u8, or a video file; with --listen an rtmp:// address")
    p.add_argument("-c", "--config", type=Path, help="TOML config file (defaults < file < STREAMWATCH_* env < options)")
    p.add_argument("--listen", action="store_true", help="be the RTMP endpoint a publisher pushes to (e.g. rtmp://0.0.0.0:1935/live/KEY)")
    p.add_argument("--id", default="default", help="stream id (default: default)")
    p.add_argument("--open-timeout", dest="open_timeout_s", type=float, help="seconds to open a live source (and wait for its video)")
    p.add_argument("--hls-variant", help="HLS master playlist: auto, highest, lowest or a bandwidth in bit/s (default auto)")
    p.add_argument("--read-timeout", dest="read_timeout_s", type=float, help="seconds without data before a live source is stalled")
    p.add_argument("--max-retries", type=int, help="reconnect attempts before giving up (0: fail at once; default: forever)")
    p.add_argument("--decode", choices=["auto", "full", "reference", "keyframes"], help="decoding mode (default auto)")
    p.add_argument("--hwaccel", choices=["none", "auto", "cuda"], help="hardware decoding (never required)")
    p.add_argument("--realtime", action="store_true", help="pace a file in real time instead of as fast as possible")


def _cmd_sample(a: argparse.Namespace) -> int:
    from streamwatch.app import build_pipeline
    from streamwatch.config import StreamConfig, load_settings
    from streamwatch.events.model import HealthEvent
    from streamwatch.ingest.preflight import check_source, check_tools
    from streamwatch.sampling.export import SampleWriter

    spec = check_source(a.source, listen=a.listen)

    overrides = _ingest_overrides(a)
    sampling: dict[str, Any] = {"every_s": a.every} if a.every is not None else {}
    if a.max_side is not None:
        sampling["max_side"] = a.max_side
    if sampling:
        overrides["sampling"] = sampling
    settings = load_settings(a.config, overrides)
    check_tools(spec, settings.ingest)
    _setup_logging(settings.log_level)
    stream = StreamConfig(id=a.id, source=a.source, listen=a.listen)
    pipeline = build_pipeline(stream, settings)
    writer = SampleWriter(a.out, settings.sampling.max_side)
    counts: Counter[str] = Counter()
    signal.signal(signal.SIGTERM, lambda *_: pipeline.reader.stop())
    t0 = time.perf_counter()
    try:
        for item in pipeline.run():
            writer.write(item)
            if isinstance(item, HealthEvent):
                if not a.quiet:
                    print(f"[{item.offset:8.2f}s] health: {item.describe()}", file=sys.stderr)
            else:
                counts[item.decision.value] += 1
    except KeyboardInterrupt:
        pipeline.reader.stop()
    finally:
        writer.close()
    dt = time.perf_counter() - t0
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{sum(counts.values())} samples in {dt:.1f}s ({summary}); wrote {a.out / 'samples.jsonl'}")
    return 0


def _cmd_probe(a: argparse.Namespace) -> int:
    from streamwatch.config import load_settings
    from streamwatch.ingest.preflight import check_source, check_tools
    from streamwatch.ingest.probe import probe

    spec = check_source(a.source, listen=a.listen)
    settings = load_settings(a.config, _ingest_overrides(a))
    check_tools(spec, settings.ingest)
    _setup_logging(settings.log_level)
    result = probe(spec, settings.ingest, max_side=settings.analysis.max_side)
    print("\n".join(result.lines()))
    return 0


def _cmd_check_config(a: argparse.Namespace) -> int:
    from streamwatch.analysis.policy import load_policy
    from streamwatch.cli_checks import check_encoder
    from streamwatch.cli_run import check_streams, missing_for_run, token_warning
    from streamwatch.config import load_settings
    from streamwatch.vlm.persona import load_persona
    from streamwatch.vlm.registry import load_registry

    settings = load_settings(a.config)
    check_streams(settings)
    paths = [a.policy] if a.policy else list(dict.fromkeys([settings.analysis.policy, *(s.policy for s in settings.streams if s.policy)]))
    policies = [load_policy(p) for p in paths]
    registry = load_registry(settings.vlm.registry, settings.vlm.roles)
    persona = load_persona(settings.vlm.persona)
    encoder = check_encoder(settings.analysis.encoder)
    n = len(settings.streams)
    checked = "; ".join(f"policy {p.path}: OK ({len(p.rules)} rules)" for p in policies)
    roles = ", ".join(f"{r.value} → {' → '.join(c)}" for r, c in registry.roles.items())
    head = f"{a.config or 'defaults'}: OK ({n} stream{'s' if n != 1 else ''})"
    print(f"{head}; {checked}; persona {persona.id}: OK; {encoder}; models: {roles}")
    for missing in (missing_for_run(settings, a.config), token_warning(settings, a.config)):
        if missing is not None:  # valid, but `run` would refuse or be unreachable: say what to add
            print(f"streamwatch: warning: {missing}", file=sys.stderr)
    return 0


def _cmd_init(a: argparse.Namespace) -> int:
    from streamwatch.config_example import render_example

    out: Path = a.path
    if out.exists() and not a.force:
        raise ConfigError(f"{out} exists: not overwritten (--force to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_example(), encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from e
    print(f"wrote {out}: edit [[streams]] and [[server.tokens]], then `streamwatch check-config {out}` and `streamwatch run -c {out}`")
    return 0


def _cmd_models_list(a: argparse.Namespace) -> int:
    from streamwatch.config import load_settings
    from streamwatch.vlm.registry import load_registry

    settings = load_settings(a.config)
    registry = load_registry(settings.vlm.registry, settings.vlm.roles)
    rows: list[tuple[str, ...]] = [("id", "backend", "params", "mode", "capabilities", "where")]
    for m in registry.models.values():
        where = m.endpoint or m.path or "templates from the local evidence"
        params = f"{m.params_b:g}B" if m.params_b else "-"
        rows.append((m.id, m.backend, params, m.mode, ",".join(c.value for c in m.capabilities), str(where)))
    print("\n".join(table(rows, right=frozenset({2}))))
    print()
    for role, chain in registry.roles.items():
        print(f"{role.value:<11} {' → '.join(chain)}")
    if any(m.backend == "openai" for m in registry.models.values()):
        print("\nendpoints listed, not contacted: `streamwatch models check` sends each a real request")
    return 0


def table(rows: list[tuple[str, ...]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows as aligned text columns, each as wide as its widest cell (``right``: right-aligned columns)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    cells = [[c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))] for r in rows]
    return ["  ".join(r).rstrip() for r in cells]


def _cmd_models_switch(a: argparse.Namespace) -> int:
    from streamwatch.cli_admin import AdminRefused, AdminUnreachable, admin_request, admin_token

    try:
        token = admin_token(a.token)
    except AdminRefused as e:
        raise ConfigError(e.message) from e
    try:
        msg = admin_request(a.url, token, {"type": "switch_model", "role": a.role, "model": a.model}, frozenset({"switched"}), a.timeout)
    except AdminRefused as e:
        print(f"streamwatch: switch refused: {e.message}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"streamwatch: no answer within {a.timeout:g}s (the switch may still finish)", file=sys.stderr)
        return 1
    except AdminUnreachable as e:
        print(f"streamwatch: {e}", file=sys.stderr)
        return 1
    print(f"{msg['role']}: {msg['old']} → {msg['model']} in {msg['seconds']:.1f}s")
    return 0


def _cmd_export_encoder(a: argparse.Namespace) -> int:
    from streamwatch.analysis.encoder_export import export_encoder

    out = a.output or Path("models/encoders") / (a.name or Path(a.source).name.replace("/", "_"))
    m = export_encoder(a.source, out, name=a.name, exporter=a.exporter, opset=a.opset, int8=a.int8, fp16=a.fp16)
    v = m["verification"]
    print(f"{m['architecture']} → {out}: {m['embedding_dim']}-d embeddings, exported in {m['seconds']:.1f}s")
    diff = f"vision {v['vision_max_abs_diff']:.1e}, text {v['text_max_abs_diff']:.1e}"
    print(f"  ONNX vs torch max abs diff: {diff}; batch sizes {v['batch_sizes']} OK")
    for name, var in m["variants"].items():
        print(f"  {name}: {var['file']}, cosine to fp32 min {var['cosine_min']:.5f} mean {var['cosine_mean']:.5f}")
    return 0


def _cmd_search(a: argparse.Namespace) -> int:
    import json

    from streamwatch.analysis.encoder import Encoder
    from streamwatch.analysis.search import FrameSearch, hit_json
    from streamwatch.config import load_settings
    from streamwatch.events.store import EventStore

    settings = load_settings(a.config)
    folder = a.encoder or settings.analysis.encoder.path
    if folder is None:
        raise ConfigError("search needs the vision encoder the frames were indexed with: --encoder DIR or analysis.encoder.path")
    data_dir = a.data or settings.data_dir
    if not (data_dir / "events.sqlite3").is_file():
        raise EventsError(f"no event store in {data_dir} (events.sqlite3 not found)")
    store = EventStore(data_dir, retention_days=None, retention_mb=None)
    try:
        hits = FrameSearch(Encoder(folder, device="cpu"), store).search(a.query, stream=a.stream, limit=a.limit)
        if a.json:
            print(json.dumps([hit_json(h) for h in hits], ensure_ascii=False, indent=1))
            return 0
        if not hits:
            print("no indexed frames match (is the encoder the one the frames were indexed with?)")
        for h in hits:
            f = h.frame
            thumb = store.frame_path(f.thumb) if f.thumb else None
            print(f"{h.score:6.3f}  {f.stream}  {hit_json(h)['offset_hms']}  {' '.join(f.tags) or '-':<24} {thumb or ''}")
    finally:
        store.close()
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from streamwatch.cli_checks import report_target
    from streamwatch.config import load_settings
    from streamwatch.events.codec import parse_iso
    from streamwatch.events.store import EventStore
    from streamwatch.report import collect, render

    out, fmt = report_target(a.output, a.format, Path(a.stream))  # the format from --format or -o's extension
    settings = load_settings(a.config)
    data_dir = a.data or settings.data_dir
    if not (data_dir / "events.sqlite3").is_file():
        raise EventsError(f"no event store in {data_dir} (events.sqlite3 not found)")
    store = EventStore(data_dir, retention_days=None, retention_mb=None)
    try:
        start = parse_iso(a.start) if a.start else None
        end = parse_iso(a.end) if a.end else None
        inputs = collect(store, a.stream, start, end, embed_images=fmt == "html")
        known = ", ".join(store.streams()) or "none"
    finally:
        store.close()
    if not inputs.events:
        window = f" between {a.start or 'the start'} and {a.end or 'the end'} (UTC)" if a.start or a.end else ""
        raise EventsError(f"no events for stream {a.stream!r}{window} in {data_dir} (streams: {known})")
    text = render(inputs, fmt, settings.ui)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise EventsError(f"cannot write {out}: {e.strerror or e}") from e
    print(f"{fmt} report of {len(inputs.events)} events for {a.stream}: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamwatch", description="Watch live streams and react in real time.")
    p.add_argument("--version", action="version", version=f"streamwatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("sample", help="sample a source: kept frames as JPEG + a JSONL log of every sampled frame")
    _add_source_options(s)
    s.add_argument("--every", type=float, help="seconds between samples (default 1)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--max-side", type=int, help="long side of written frames (default 512)")
    s.add_argument("-q", "--quiet", action="store_true", help="do not print health events")
    s.set_defaults(func=_cmd_sample)

    pr = sub.add_parser("probe", help="print codec, resolution, fps and keyframe interval of a source")
    _add_source_options(pr)
    pr.set_defaults(func=_cmd_probe)

    c = sub.add_parser("check-config", help="validate a config file (and STREAMWATCH_* env) and the files it names, and exit")
    c.add_argument("config", type=Path, nargs="?", help="TOML config file")
    c.add_argument("--policy", type=Path, help="policy file to check (default: analysis.policy)")
    c.set_defaults(func=_cmd_check_config)

    ini = sub.add_parser("init", help="write the commented example config (every section, with defaults)")
    ini.add_argument("path", type=Path, nargs="?", default=Path("streamwatch.toml"), help="where (default: streamwatch.toml)")
    ini.add_argument("--force", action="store_true", help="overwrite an existing file")
    ini.set_defaults(func=_cmd_init)

    from streamwatch.cli_run import add_parsers as add_run_parsers

    add_run_parsers(sub)
    from streamwatch.cli_cluster import add_parsers as add_cluster_parsers

    add_cluster_parsers(sub)

    mo = sub.add_parser(
        "models", help="list the model registry and role chains, check the servers, or switch a role's model on a running daemon"
    )
    mo_sub = mo.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = mo_sub.add_parser("list", help="validate the registry and print models and role chains")
    ml.add_argument("-c", "--config", type=Path, help="TOML config file ([vlm] registry, roles)")
    ml.set_defaults(func=_cmd_models_list)
    ms = mo_sub.add_parser("switch", help="load, warm and switch ROLE to MODEL on a running daemon (admin token)")
    ms.add_argument("role", choices=["compliance", "reply", "qa"])
    ms.add_argument("model", help="registry id")
    ms.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="the daemon's /ws address")
    ms.add_argument("--token", help="admin token (default: $STREAMWATCH_TOKEN)")
    ms.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the switch")
    ms.set_defaults(func=_cmd_models_switch)
    from streamwatch.cli_models import add_check_parser

    add_check_parser(mo_sub)
    from streamwatch.cli_eval import add_export_parser
    from streamwatch.cli_eval import add_parser as add_eval_parser

    add_eval_parser(sub)
    add_export_parser(sub)

    ex = sub.add_parser("export-encoder", help="export a CLIP / Chinese-CLIP / SigLIP model to ONNX (needs the hf extra)")
    ex.add_argument("source", help="hub id or local folder of the checkpoint")
    ex.add_argument("-o", "--output", type=Path, help="output folder (default models/encoders/NAME)")
    ex.add_argument("--name", help="encoder name (default: the source's last path part)")
    ex.add_argument(
        "--exporter",
        choices=["dynamo", "legacy", "optimum"],
        default="dynamo",
        help="torch.onnx.export mode, or optimum-onnx (default dynamo)",
    )
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--int8", action="store_true", help="also write a dynamic-int8 vision model (CPU)")
    ex.add_argument("--fp16", action="store_true", help="also write an fp16 vision model (GPU)")
    ex.set_defaults(func=_cmd_export_encoder)

    se = sub.add_parser("search", help="find kept frames by a text query (needs the vision encoder they were indexed with)")
    se.add_argument("query", help='e.g. "汉服", "a guitar", "the sponsor banner"')
    se.add_argument("--stream", help="only this stream")
    se.add_argument("--limit", type=int, default=10, help="hits to show (default 10)")
    se.add_argument("--data", type=Path, help="data directory (default: data_dir from the config)")
    se.add_argument("--encoder", type=Path, help="encoder folder (default: analysis.encoder.path)")
    se.add_argument("-c", "--config", type=Path, help="TOML config file")
    se.add_argument("--json", action="store_true", help="JSON output (as GET /search gives)")
    se.set_defaults(func=_cmd_search)

    r = sub.add_parser("report", help="write a post-stream report (html, json or csv) from the event store")
    r.add_argument("stream", help="stream id")
    r.add_argument("--data", type=Path, help="data directory (default: data_dir from the config, ./streamwatch-data)")
    r.add_argument("-c", "--config", type=Path, help="TOML config file (for data_dir)")
    r.add_argument("--from", dest="start", help="only events at or after this UTC time (ISO 8601)")
    r.add_argument("--to", dest="end", help="only events at or before this UTC time (ISO 8601)")
    r.add_argument("--format", choices=["html", "json", "csv"], help="report format (default: -o's extension, else html)")
    r.add_argument("-o", "--output", type=Path, help="output file (default STREAM-report.FORMAT)")
    r.set_defaults(func=_cmd_report)

    from streamwatch.cli_admin import add_streams_parser
    from streamwatch.cli_post import add_summary_parser

    add_streams_parser(sub)
    add_summary_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    try:
        return int(a.func(a))
    except BadSource as e:  # refused before anything started: the same line and code from every command
        print(f"streamwatch: error: {e}", file=sys.stderr)
        return 2
    except StreamwatchError as e:
        from streamwatch.redact import mask_text

        print(f"streamwatch: error: {mask_text(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """The ``streamwatch`` executable: :func:`main`, then an exit without interpreter finalisation.

    The process holds ONNX Runtime, OpenCV, PyAV, zxing-cpp (nanobind) and possibly torch; their native
    static destructors have crashed the interpreter at exit (SIGSEGV after a clean shutdown, seen on CI),
    which turned a clean ``run`` into exit code -11 for its supervisor. Everything is flushed and closed
    by then (stores, servers, logs), so the exit status is ``main()``'s.
    """
    import logging
    import os

    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
