"""``streamwatch probe``: codec, resolution, frame rate and measured keyframe interval of a source."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import av.error

from streamwatch.config import IngestConfig
from streamwatch.errors import SourceCorrupt
from streamwatch.ingest.frame import display_rotation
from streamwatch.ingest.hls import PlaylistTracker, segment_bitrate
from streamwatch.ingest.hlsparse import Playlist
from streamwatch.ingest.opening import open_video
from streamwatch.ingest.srtrelay import SrtRelay
from streamwatch.ingest.url import SourceKind, SourceSpec


@dataclass(frozen=True, slots=True)
class ProbeResult:
    source: str  # redacted
    format: str
    codec: str
    profile: str | None
    width: int
    height: int
    pix_fmt: str | None
    fps: float | None
    keyframe_interval_s: float | None
    duration_s: float | None
    bitrate: int | None
    rotation: int = 0  # display rotation (degrees counter-clockwise) frames are turned by

    @property
    def displayed(self) -> tuple[int, int]:
        """(width, height) as displayed: the coded size turned by ``rotation``."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    def lines(self) -> list[str]:
        kf = f"{self.keyframe_interval_s:.2f}s" if self.keyframe_interval_s is not None else "unknown"
        return [
            f"source:    {self.source}",
            f"format:    {self.format}",
            f"codec:     {self.codec}" + (f" ({self.profile})" if self.profile else ""),
            f"size:      {self.displayed[0]}x{self.displayed[1]}" + (f" {self.pix_fmt}" if self.pix_fmt else ""),
            f"rotation:  {self.rotation}° (coded {self.width}x{self.height}, frames are turned upright)"
            if self.rotation
            else "rotation:  none",
            f"fps:       {self.fps:.3f}" if self.fps else "fps:       unknown",
            f"keyframes: every {kf}",
            f"duration:  {self.duration_s:.2f}s" if self.duration_s else "duration:  live/unknown",
            f"bitrate:   {self.bitrate // 1000} kb/s" if self.bitrate else "bitrate:   unknown",
        ]


def probe(spec: SourceSpec, cfg: IngestConfig, *, max_seconds: float = 12.0, max_side: int = 960) -> ProbeResult:
    """Open once and read packets for up to ``max_seconds`` of stream time (a live source: until its
    second keyframe, i.e. about one keyframe interval after the video arrives).

    Only the first picture is decoded (for its display rotation); the rest is demuxed only. A live
    FLV source waits for its video up to ``cfg.open_timeout_s``; an HLS master playlist is probed on
    the variant ``cfg.hls_variant`` chooses, a recording's duration is its segments'.
    """
    hls: Playlist | None = None
    tracker = None
    if spec.kind is SourceKind.HLS:
        tracker = PlaylistTracker(spec.url, cfg.open_timeout_s, cfg.hls_variant, max_side)
        hls = tracker.fetch()
        spec = tracker.media_spec(spec)
    relay = SrtRelay(spec, cfg) if spec.kind is SourceKind.SRT else None
    try:
        if relay is not None:
            pipe = relay.connect()
            container = open_video(spec, cfg, reopen=lambda: pipe)
        else:
            container = open_video(spec, cfg)
    except BaseException:
        if relay is not None:
            relay.close()
        raise
    try:
        vs = container.streams.video[0]
        ctx = vs.codec_context
        keys: list[float] = []
        first: float | None = None
        rotation: int | None = None
        try:
            for packet in container.demux(vs):
                if rotation is None:
                    for f in packet.decode():
                        rotation = display_rotation(f) or 0
                if packet.pts is None or vs.time_base is None:
                    continue
                t = float(packet.pts * vs.time_base)
                first = t if first is None else first
                if packet.is_keyframe:
                    keys.append(t)
                if (spec.live and hls is None and len(keys) >= 2) or (t - first >= max_seconds and len(keys) >= 3):
                    break
        except av.error.FFmpegError as e:
            if not keys:
                raise SourceCorrupt(f"{spec.redacted}: no readable packets ({e.strerror})") from None
        gaps = [b - a for a, b in itertools.pairwise(keys) if b > a]
        rate = vs.average_rate or vs.guessed_rate
        duration = float(container.duration / 1_000_000) if container.duration else None
        bitrate = int(container.bit_rate) if container.bit_rate else None
        if hls is not None:  # FFmpeg knows neither for HLS: the playlist does
            duration = hls.duration_s if hls.ended and hls.durations else None
            chosen = tracker.chosen if tracker is not None else None
            bitrate = chosen.bandwidth if chosen is not None and chosen.bandwidth else segment_bitrate(hls, cfg.open_timeout_s)
        elif spec.kind is not SourceKind.FILE:
            duration = None
        return ProbeResult(
            source=spec.redacted,
            format=str(container.format.name),
            codec=str(ctx.name),
            profile=getattr(ctx, "profile", None),
            width=int(ctx.width),
            height=int(ctx.height),
            pix_fmt=getattr(ctx, "pix_fmt", None),
            fps=float(rate) if rate else None,
            keyframe_interval_s=max(gaps) if gaps else None,
            duration_s=duration,
            bitrate=bitrate,
            rotation=rotation or 0,
        )
    finally:
        container.close()
        if relay is not None:
            relay.close()
