"""Ingest: open RTMP / HLS / RTSP / file sources (or listen for an RTMP publisher) and decode frames."""

from streamwatch.ingest.frame import Frame
from streamwatch.ingest.reader import FrameReader, ReaderStats, open_container
from streamwatch.ingest.url import SourceKind, SourceSpec, parse_source, redact_url

__all__ = [
    "Frame",
    "FrameReader",
    "ReaderStats",
    "SourceKind",
    "SourceSpec",
    "open_container",
    "parse_source",
    "redact_url",
]
