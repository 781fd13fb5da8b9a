"""Sources checked before anything starts: what :func:`~streamwatch.ingest.url.parse_source` refuses,
and a local file that is missing, a folder or unreadable.

The CLI runs these before loading models or binding ports (``run``, ``analyze``, ``probe``,
``sample``, ``check-config``), so one fault gives one line and exit code 2 whichever command met it.
An SRT source's relay (the FFmpeg CLI, built with SRT) is looked for by :func:`check_tools` once the
settings are loaded. A live source is not contacted here: a publisher may start later, and ingest reconnects.
"""

from __future__ import annotations

import os
from pathlib import Path

from streamwatch.config import IngestConfig
from streamwatch.errors import BadSource
from streamwatch.ingest.url import SourceKind, SourceSpec, parse_source, source_scheme


def check_source(url: str, *, listen: bool = False, stream: str | None = None) -> SourceSpec:
    """``url`` parsed, with a local file checked on disk; BadSource (prefixed with ``stream``'s id) if not readable."""
    try:
        spec = parse_source(url, listen=listen)
        if spec.kind is SourceKind.FILE and not source_scheme(spec.url):  # a local file (not http(s)://)
            _check_file(Path(spec.url))
    except BadSource as e:
        if stream is None:
            raise
        raise BadSource(f"stream {stream}: {e}") from e
    return spec


def check_tools(spec: SourceSpec, cfg: IngestConfig, *, stream: str | None = None) -> None:
    """BadSource when the tool a source needs is missing: an SRT source's relay (the FFmpeg CLI with SRT)."""
    if spec.kind is not SourceKind.SRT:
        return
    from streamwatch.ingest.srtrelay import check_relay

    try:
        check_relay(spec, cfg)
    except BadSource as e:
        if stream is None:
            raise
        raise BadSource(f"stream {stream}: {e}") from e


def _check_file(path: Path) -> None:
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    if not path.exists():
        raise BadSource(f"cannot open {path}: no such file{where}")
    if path.is_dir():
        raise BadSource(f"cannot open {path}: it is a folder, not a video file")
    if not os.access(path, os.R_OK):
        raise BadSource(f"cannot open {path}: permission denied")
