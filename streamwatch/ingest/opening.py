"""Opening a source with PyAV: per-kind demuxer options, timeouts, and waiting for the video to arrive.

A live FLV source (RTMP, HTTP-FLV) often delivers audio before its first video keyframe: nginx-rtmp
sends a new player nothing of the video until the next keyframe (up to one keyframe interval). A
short probe then sees an audio-only container ("no video stream"); a long one makes every
video-only stream wait for the whole probe (FFmpeg waits for an audio stream that never comes).
:func:`open_video` does both: a short probe first; when it found audio but no video, and the FLV
metadata (``onMetaData``: ``videocodecid``, ``width``; nginx's ``displayWidth``) does not say the
stream has none, a second open whose probe lasts the rest of ``open_timeout_s`` and returns as soon
as the first video packet arrives (with both streams found FFmpeg stops probing at once). A stream
that still has audio and no video is :class:`AudioOnly`: its own state, not an outage.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Mapping
from typing import Any

import av
import av.error

from streamwatch.config import HwAccel, IngestConfig
from streamwatch.errors import NoVideoStream, SourceOpenError, SourceTimeout
from streamwatch.ingest.url import SourceKind, SourceSpec
from streamwatch.redact import mask_text

logger = logging.getLogger(__name__)

SHORT_PROBE_S = 1.0  # first probe of a live FLV source: a video-only stream waits this long for audio
PROBE_BYTES = 32_000_000  # enough for open_timeout_s of a 1080p60 stream at 20 Mb/s


class AudioOnly(NoVideoStream):
    """The source opened with audio and no video within the open timeout (a music-only interlude)."""

    def __init__(self, message: str, *, announced: bool | None) -> None:
        super().__init__(message)
        self.announced = announced  # the metadata said there is video (True), none (False), or nothing (None)


def scrub(e: BaseException, spec: SourceSpec) -> str:
    """An error's text without the URL it quotes; any other error's text with its URLs masked (:mod:`streamwatch.redact`)."""
    if isinstance(e, av.error.FFmpegError):
        return mask_text(str(e.strerror or type(e).__name__))
    return mask_text((str(e) or type(e).__name__).replace(spec.url, spec.redacted))


def open_options(spec: SourceSpec, probe_s: float = SHORT_PROBE_S) -> dict[str, str]:
    """Demuxer/protocol options per source kind (see shared notes on the traps)."""
    if spec.kind in (SourceKind.RTMP, SourceKind.HTTP):
        return {"fpsprobesize": "0", "analyzeduration": str(int(probe_s * 1_000_000)), "probesize": str(PROBE_BYTES)}
    if spec.kind is SourceKind.LISTEN:
        return {"listen": "1", "fpsprobesize": "0"}
    if spec.kind is SourceKind.HLS:
        return {"m3u8_hold_counters": "3"}
    if spec.kind is SourceKind.RTSP:
        return {"rtsp_transport": "tcp"}
    if spec.kind is SourceKind.UDP:  # a bigger socket buffer and FIFO; a full FIFO drops packets instead of failing
        return {"fpsprobesize": "0", "analyzeduration": "1000000", "buffer_size": "4194304", "fifo_size": "50000", "overrun_nonfatal": "1"}
    if spec.kind is SourceKind.SRT:  # the relay's MPEG-TS on a pipe (ingest/srtrelay.py)
        return {"format": "mpegts", "fpsprobesize": "0", "analyzeduration": "1000000"}
    return {}


def video_announced(metadata: Mapping[str, str]) -> bool | None:
    """Whether FLV metadata says the stream carries video: True, False, or None when it does not say.

    >>> video_announced({"videocodecid": "7", "width": "1920"}), video_announced({"displayWidth": "0"})
    (True, False)
    >>> video_announced({"encoder": "obs"}) is None
    True
    """
    codec = metadata.get("videocodecid")
    if codec is not None:
        return codec.strip() not in ("", "0", "0.0")
    for key in ("width", "displayWidth"):
        if key in metadata:
            try:
                return float(metadata[key]) > 0
            except ValueError:
                return None
    return None


def open_container(spec: SourceSpec, cfg: IngestConfig, options: dict[str, str] | None = None, *, source: Any = None) -> Any:
    """``av.open`` with timeouts for live sources; errors become :class:`SourceOpenError` / :class:`SourceTimeout`.

    ``options`` are added to the per-kind demuxer options (e.g. HLS ``live_start_index``); ``source``
    (a file-like object) is opened instead of the URL, with ``options["format"]`` as the demuxer.
    """
    opts = open_options(spec) | (options or {})
    kwargs: dict[str, Any] = {"options": opts}
    if "format" in opts:
        kwargs["format"] = opts.pop("format")
    if spec.live and source is None:
        kwargs["timeout"] = (cfg.open_timeout_s, cfg.read_timeout_s)
    if spec.kind is SourceKind.UDP:  # the socket's own read timeout (µs), under the one above
        opts.setdefault("timeout", str(int(cfg.read_timeout_s * 1_000_000)))
    if cfg.hwaccel is not HwAccel.NONE:
        from av.codec.hwaccel import HWAccel, hwdevices_available

        if "cuda" in hwdevices_available():
            kwargs["hwaccel"] = HWAccel("cuda", allow_software_fallback=True)
        elif cfg.hwaccel is HwAccel.CUDA:
            logger.warning("hwaccel=cuda asked but this FFmpeg has no CUDA device: decoding in software")
    try:
        return av.open(spec.url if source is None else source, **kwargs)
    except av.error.FFmpegError as e:
        if isinstance(e, av.error.TimeoutError | av.error.ExitError):
            raise SourceTimeout(f"timed out opening {spec.redacted}") from None
        raise SourceOpenError(f"cannot open {spec.redacted}: {scrub(e, spec)}") from None
    except TimeoutError:  # a file-like source's socket
        raise SourceTimeout(f"timed out opening {spec.redacted}") from None
    except (OSError, http.client.HTTPException) as e:  # a local file that does not exist; a dropped HTTP body
        raise SourceOpenError(f"cannot open {spec.redacted}: {mask_text(str(getattr(e, 'strerror', None) or scrub(e, spec)))}") from None


def open_video(spec: SourceSpec, cfg: IngestConfig, options: dict[str, str] | None = None, *, reopen: Any = None) -> Any:
    """Open ``spec`` and make sure it has a video stream, waiting for it up to ``open_timeout_s``.

    ``reopen()`` returns a fresh file-like body for a second try (HTTP), or None to reopen the URL.
    Raises :class:`AudioOnly` (audio and no video), :class:`NoVideoStream` (nothing at all) and the
    errors of :func:`open_container`.
    """
    t0 = time.monotonic()
    source = reopen() if reopen is not None else None
    container = open_container(spec, cfg, options, source=source)
    if container.streams.video or spec.kind not in (SourceKind.RTMP, SourceKind.HTTP):
        return _checked(container, spec)
    audio = bool(container.streams.audio)
    announced = video_announced(dict(container.metadata))
    container.close()
    left = cfg.open_timeout_s - (time.monotonic() - t0)
    if not audio or announced is False or left < 0.5:
        raise _no_video(spec, audio, announced, cfg.open_timeout_s)
    logger.debug("%s: audio first; waiting up to %.1fs for the video", spec.redacted, left)
    source = reopen() if reopen is not None else None
    container = open_container(spec, cfg, (options or {}) | {"analyzeduration": str(int(left * 1_000_000))}, source=source)
    if container.streams.video:
        return container
    audio, announced = bool(container.streams.audio), video_announced(dict(container.metadata))
    container.close()
    raise _no_video(spec, audio, announced, cfg.open_timeout_s)


def _checked(container: Any, spec: SourceSpec) -> Any:
    if container.streams.video:
        return container
    audio = bool(container.streams.audio)
    container.close()
    raise _no_video(spec, audio, None, 0.0)


def _no_video(spec: SourceSpec, audio: bool, announced: bool | None, waited: float) -> NoVideoStream:
    if not audio:
        return NoVideoStream(f"{spec.redacted} has no video stream")
    if announced:
        why = f"audio only: no video keyframe within {waited:g}s (keyframe interval longer than ingest.open_timeout_s?)"
    else:
        why = "audio only: the source sends no video"
    return AudioOnly(why, announced=announced)
