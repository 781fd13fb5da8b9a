"""Configuration: one validated tree from a TOML file, ``STREAMWATCH_*`` environment variables and
command-line overrides (in rising priority).

Nothing is read at import time: call :func:`load_settings` once at start-up and pass the result
down. Unknown keys are errors (``extra="forbid"``), and :class:`~streamwatch.errors.ConfigError`
messages name the file and the offending key (and line, for TOML syntax errors).

Nested env vars use ``__``: ``STREAMWATCH_INGEST__READ_TIMEOUT_S=5``.
"""

from __future__ import annotations

import enum
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from streamwatch.config_errors import env_names
from streamwatch.config_errors import format_validation_error as format_validation_error  # (re-exported: policy, desired)
from streamwatch.config_errors import locate_key as locate_key
from streamwatch.errors import ConfigError
from streamwatch.i18n import UIConfig
from streamwatch.outbound.actions_config import ActionsConfig
from streamwatch.outbound.config import MqttConfig, WebhookConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecodeMode(enum.Enum):
    """Which frames the decoder produces."""

    AUTO = "auto"  # keyframes when the sampling interval covers a GOP, else reference frames, else all
    FULL = "full"  # decode every frame
    REFERENCE = "reference"  # skip non-reference frames (B-frames): ~35% less work, ≤ a few frames' gap
    KEYFRAMES = "keyframes"  # keyframes only (falls back to full decoding when keyframes are too sparse)


class HwAccel(enum.Enum):
    NONE = "none"
    AUTO = "auto"  # use CUDA/NVDEC when FFmpeg and the machine have it, else software
    CUDA = "cuda"


class IngestConfig(_Section):
    open_timeout_s: Annotated[float, Field(gt=0, description="Seconds to wait for a live source to open (connect + probe).")] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0, description="Seconds without data before a live source counts as stalled.")] = 5.0
    backoff_initial_s: Annotated[float, Field(gt=0, description="First reconnect delay.")] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0, description="Reconnect delay cap.")] = 10.0
    backoff_multiplier: Annotated[float, Field(ge=1, description="Delay growth per failed attempt.")] = 2.0
    backoff_jitter: Annotated[float, Field(ge=0, le=1, description="Random spread of each delay, as a fraction (0.2 = ±20%).")] = 0.2
    max_retries: Annotated[
        int | None, Field(ge=0, description="Reconnect attempts before giving up; unset = forever, 0 = fail at once.")
    ] = None
    decode: Annotated[DecodeMode, Field(description="Decoding mode: auto, full, reference or keyframes.")] = DecodeMode.AUTO
    hwaccel: Annotated[HwAccel, Field(description="Hardware decoding: none, auto or cuda (never required).")] = HwAccel.NONE
    skip_deblock: Annotated[
        bool,
        Field(
            description="When sampling, skip H.264/HEVC deblocking on all but keyframes (about a fifth less decode CPU; "
            "pHash within 0.2 bit of a fully decoded frame). false = decode every sample exactly."
        ),
    ] = True
    realtime: Annotated[bool, Field(description="Pace file sources in real time instead of as fast as possible.")] = False
    reader_nice: Annotated[
        int,
        Field(
            ge=0,
            le=19,
            description="Lower the reader (decoder) threads' CPU priority by this much (Linux nice, per thread): when the "
            "cores are short, analysis runs first and decoders catch up from their buffers. 0 = same priority.",
        ),
    ] = 10
    queue_size: Annotated[
        int, Field(ge=1, description="Frames buffered between decoder and sampler; live sources drop the oldest when full.")
    ] = 8
    listen_relay: Annotated[
        Literal["auto", "nginx", "ffmpeg"],
        Field(
            description="Listen mode's RTMP endpoint: nginx (nginx + libnginx-mod-rtmp run by streamwatch, pulled on loopback), "
            "ffmpeg (FFmpeg's single-connection listener), auto (nginx when installed)."
        ),
    ] = "auto"
    hls_variant: Annotated[
        str,
        Field(
            pattern=r"^(auto|highest|lowest|[0-9]+)$",
            description="Which variant of an HLS master playlist is watched (only its segments are fetched): auto (the smallest "
            "whose long side is at least analysis.max_side, else the largest), highest, lowest, or a bandwidth in bit/s (the nearest).",
        ),
    ] = "auto"
    nginx: Annotated[str, Field(description="The nginx binary for the listen relay.")] = "nginx"
    ffmpeg: Annotated[
        str, Field(description="The FFmpeg CLI run as the relay for SRT sources (PyAV's FFmpeg has no SRT; Debian's has libsrt).")
    ] = "/usr/bin/ffmpeg"
    nginx_rtmp_module: Annotated[str, Field(description="Path of nginx's RTMP module (Debian: libnginx-mod-rtmp).")] = (
        "/usr/lib/nginx/modules/ngx_rtmp_module.so"
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> IngestConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class SamplingConfig(_Section):
    every_s: Annotated[float, Field(gt=0, description="Sample one frame every N seconds of stream time.")] = 1.0
    black_luma: Annotated[float, Field(ge=0, le=255, description="Mean luma (0-255) under which a low-contrast frame is black.")] = 32.0
    uniform_std: Annotated[float, Field(ge=0, description="Luma standard deviation under which a frame is black/uniform.")] = 6.0
    blur_threshold: Annotated[
        float, Field(ge=0, description="Sharpness (variance of Laplacian, best tile) under which a frame is blurred.")
    ] = 60.0
    frozen_after_s: Annotated[float, Field(gt=0, description="Seconds without visible change before video counts as frozen.")] = 2.0
    frozen_changed: Annotated[
        float, Field(ge=0, le=1, description="Without regions: fraction of changed pixels under which two samples are 'unchanged'.")
    ] = 0.002
    black_after_s: Annotated[float, Field(ge=0, description="Seconds of black before a 'black' health event is raised.")] = 2.0
    regions: Annotated[
        bool,
        Field(
            description="Region-level change signal: a sample is new content when any tile changed (captions, QR codes, logos), "
            "frozen means no tile moved, and cached analyses are reused only for frames whose tiles match. "
            "false = the global pHash alone (misses small overlays; kept as the benchmark baseline)."
        ),
    ] = True
    region_level: Annotated[
        int, Field(ge=1, le=255, description="Luma levels (0-255) a pixel must lie outside its 3x3 neighbourhood's range to change.")
    ] = 24
    region_min: Annotated[
        float, Field(gt=0, le=1, description="Fraction of a tile's pixels that must change for the tile to hold new content.")
    ] = 0.03
    frozen_tile_changed: Annotated[
        float, Field(gt=0, le=1, description="With regions: a tile moved since the previous sample when this fraction of it changed.")
    ] = 0.02
    dedupe_radius: Annotated[
        int, Field(ge=0, le=64, description="pHash Hamming radius within which a frame duplicates the last kept one.")
    ] = 6
    heartbeat_s: Annotated[float, Field(gt=0, description="Keep at least one frame per this many seconds even if unchanged.")] = 30.0
    max_side: Annotated[int, Field(ge=32, le=4096, description="Long side of frames handed to analysis (aspect kept).")] = 512


class StreamConfig(_Section):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Stream id used in events and URLs.")]
    source: Annotated[
        str,
        Field(
            min_length=1, description="rtmp://, rtsp://, http(s)://….m3u8 or a file path; with listen=true an rtmp:// address to listen on."
        ),
    ]
    listen: Annotated[bool, Field(description="Be the RTMP endpoint a publisher pushes to.")] = False
    every_s: Annotated[float | None, Field(gt=0, description="Override sampling.every_s for this stream.")] = None
    policy: Annotated[Path | None, Field(description="Policy file for this stream (default: analysis.policy).")] = None
    actions: Annotated[
        Literal["on", "dry_run", "off"], Field(description="This show's switch for actions on the stream (cut, warn, HTTP actions).")
    ] = "on"
    publisher: Annotated[
        str | None,
        Field(pattern=r"^[^/\s]+/[^/\s]+$", description="app/name the publisher uses on the origin (default: from an rtmp:// source)."),
    ] = None


def default_policy() -> Path:
    """``models/policy.toml`` of this checkout (the embedded default)."""
    return Path(__file__).resolve().parent.parent / "models" / "policy.toml"


def default_labels() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "labels.toml"


class EncoderConfig(_Section):
    path: Annotated[Path | None, Field(description="Exported encoder folder (manifest.json, vision.onnx, …); unset = no encoder tier.")] = (
        None
    )
    variant: Annotated[str | None, Field(description="Vision model variant from the export: int8 (CPU) or fp16 (GPU).")] = None
    labels: Annotated[Path | None, Field(description="Zero-shot labels file (prompts, thresholds, prototype images).")] = default_labels()
    semantic_threshold: Annotated[
        float | None, Field(gt=0, le=1, description="Cosine above which a frame reuses a recent frame's analysis (unset = off).")
    ] = 0.95
    batch_wait_s: Annotated[float, Field(ge=0, le=1, description="How long a frame waits for others to share an encoder batch.")] = 0.02
    index: Annotated[bool, Field(description="Keep each analysed frame's embedding and thumbnail for search.")] = True


class OverloadConfig(_Section):
    lag_s: Annotated[
        float,
        Field(gt=0, description="Analysis lag (frame arrival → policy done, the worst stream) over which the box is overloaded."),
    ] = 2.0
    after_s: Annotated[
        float,
        Field(ge=0, description="How long the lag must stay over lag_s before one degradation step (and again for each next step)."),
    ] = 3.0
    recover_s: Annotated[float, Field(ge=0, description="How long the lag must stay under the recover line before one step is undone.")] = (
        10.0
    )
    recover_share: Annotated[
        float, Field(gt=0, le=1, description="The recover line as a share of lag_s (between the lines the level holds).")
    ] = 0.5
    max_level: Annotated[
        int,
        Field(
            ge=0,
            le=3,
            description="Deepest degradation step: 1 calm streams sampled ×2, 2 calm ×4, 3 all streams ×2 too "
            "(0 = say the overload, degrade nothing).",
        ),
    ] = 3
    calm_after_s: Annotated[
        float, Field(gt=0, description="A stream is calm after this long without an alert or escalation (and with few changed tiles).")
    ] = 30.0
    calm_tiles: Annotated[
        float, Field(gt=0, le=1, description="Calm: the recent kept frames changed on average less than this share of the tiles.")
    ] = 0.25


class AnalysisConfig(_Section):
    policy: Annotated[Path, Field(description="Policy file (rules + word lists); hot-reloaded on change.")] = default_policy()
    analyzers: Annotated[list[str], Field(description="Local analyzers to run: nudity, ocr, qr.")] = ["nudity", "ocr", "qr"]
    device: Annotated[
        str, Field(pattern=r"^(auto|cpu|cuda|tensorrt)$", description="Where models run: auto (CUDA when present), cpu, cuda, tensorrt.")
    ] = "auto"
    cpu_threads: Annotated[
        int,
        Field(
            ge=0,
            le=1024,
            description="The process's CPU budget in threads (0 = the machine's cores): it sizes the analysis executor, "
            "ONNX Runtime intra-op threads per session, OpenCV's threads and each stream's decoder threads.",
        ),
    ] = 0
    threads: Annotated[
        int, Field(ge=0, description="Analysis calls at once (0 = the CPU budget); each then gets budget / threads library threads.")
    ] = 0
    max_side: Annotated[int, Field(ge=160, le=4096, description="Long side of the image the analyzers see.")] = 960
    max_batch: Annotated[int, Field(ge=1, description="Frames per analyzer batch (across streams).")] = 8
    queue_size: Annotated[int, Field(ge=1, description="Kept frames waiting for analysis per stream; live sources drop the oldest.")] = 4
    cache_radius: Annotated[
        int, Field(ge=0, le=32, description="pHash Hamming radius within which an earlier analysis is a candidate for reuse.")
    ] = 4
    cache_ttl_s: Annotated[float, Field(gt=0, description="How long an analysis result may be reused.")] = 600.0
    cache_size: Annotated[
        int, Field(ge=1, description="Analysed frames kept per stream for reuse (LRU; each holds a 57 kB region signature).")
    ] = 128
    regional: Annotated[
        bool,
        Field(
            description="Analyse only the changed regions of a frame that otherwise matches a recent analysis: QR (source "
            "resolution) and OCR (analysis scale) on the changed regions' crops, detections of unchanged regions kept "
            "(false = whole frames)."
        ),
    ] = True
    region_max_area: Annotated[
        float, Field(gt=0, le=1, description="Above this share of the picture changed, the whole frame is analysed again.")
    ] = 0.5
    small_text_px: Annotated[
        int,
        Field(
            ge=0,
            description="OCR lines under this many analysis-image pixels tall are read again on a crop of the source frame "
            "(16 px corner text on 1080p is 8 px at the analysis scale); 0 = never.",
        ),
    ] = 24
    reload_s: Annotated[float, Field(gt=0, description="How often the policy files are checked for changes.")] = 1.0
    encoder: Annotated[EncoderConfig, Field(description="The ONNX vision encoder tier (labels, semantic cache, search).")] = EncoderConfig()
    overload: Annotated[
        OverloadConfig, Field(description="When analysis falls behind: the overloaded event and the degradation order.")
    ] = OverloadConfig()


def default_persona() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "personas" / "xingmiao.toml"


def default_registry() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "registry.json"


class QuestionConfig(_Section):
    id: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", description='Answer key (policy rules match `detector = "vlm"` labels on it).')]
    question: Annotated[str, Field(min_length=3, description="The question, as the model reads it.")]
    kind: Annotated[
        str, Field(pattern=r"^(bool|choice|list|text)$", description="bool, choice (one of options), list of strings, or text.")
    ] = "bool"
    options: Annotated[list[str], Field(description="choice: the allowed answers.")] = []

    @model_validator(mode="after")
    def _options(self) -> QuestionConfig:
        if (self.kind == "choice") != bool(self.options):
            raise ValueError("options are required for kind = choice, and only for it")
        return self


class VLMConfig(_Section):
    persona: Annotated[Path, Field(description="Persona file used for replies to audience images.")] = default_persona()
    duplicate_ttl_s: Annotated[float, Field(gt=0, description="The same image (pHash) is not answered twice within this time.")] = 600.0
    registry: Annotated[Path, Field(description="Model registry (models, roles and their failover chains).")] = default_registry()
    roles: Annotated[
        dict[str, list[str]], Field(description="Override the registry's chains: role (compliance, reply, qa) → model ids, best first.")
    ] = {}
    breaker_failures: Annotated[
        int, Field(ge=1, description="Failed requests in a row (each tried twice) that open a model's circuit.")
    ] = 2
    breaker_cooldown_s: Annotated[float, Field(gt=0, description="How long an open circuit keeps a model out before one probe.")] = 30.0
    min_switch_interval_s: Annotated[float, Field(ge=0, description="Least time between two model switches of one role.")] = 120.0
    compliance_every_s: Annotated[
        float, Field(ge=0, description="Also send one kept frame per stream this often to the compliance model (0 = only escalations).")
    ] = 30.0
    compliance_deadline_s: Annotated[
        float, Field(gt=0, description="A compliance answer arriving later than this after the frame is marked late.")
    ] = 15.0
    answer_deadline_s: Annotated[
        float | None,
        Field(
            gt=0,
            description="Most seconds a fan's reply or a moderator's answer may take, all models of the chain together "
            "(each model also has its registry timeout_s); then the local template answers. Unset: the sum of the timeouts.",
        ),
    ] = 30.0
    pending_per_stream: Annotated[
        int, Field(ge=1, description="Frames waiting for the compliance model per stream; the oldest is dropped (counted).")
    ] = 2
    questions: Annotated[
        list[QuestionConfig] | None, Field(description="Compliance questions asked in one call (unset = the built-in six).")
    ] = None
    unusable_notice_after: Annotated[
        int, Field(ge=1, description="Unusable answers in a row from one model that raise a `model` health event.")
    ] = 3


class Role(enum.Enum):
    """What a WebSocket client may see and do (see server/PROTOCOL.md)."""

    OVERLAY = "overlay"  # replies to audience images (the live overlay)
    MODERATOR = "moderator"  # alerts, health, replies, answers, reviews; can ack and ask
    SUBMITTER = "submitter"  # sends audience images, gets its own replies and rejections
    ADMIN = "admin"  # everything


class TokenConfig(_Section):
    name: Annotated[
        str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Client name (logs, events, metrics).")
    ]
    role: Annotated[Role, Field(description="overlay, moderator, submitter or admin.")]
    secret: Annotated[str, Field(min_length=8, description="The bearer token (Authorization: Bearer … or ?token=…).")]
    relay: Annotated[
        bool, Field(description="A submitter token of a danmaku relay: it may also ask about the live frame and gets its answers.")
    ] = False

    @model_validator(mode="after")
    def _relay(self) -> TokenConfig:
        if self.relay and self.role is not Role.SUBMITTER:
            raise ValueError("relay applies to submitter tokens only (moderators and admins may already ask)")
        return self


class ServerConfig(_Section):
    host: Annotated[str, Field(description="Address the WebSocket/HTTP server binds.")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, description="Port for /ws and the HTTP pages (0 = any free port).")] = 8765
    api_port: Annotated[
        int | None, Field(ge=0, le=65535, description="Port for the HTTP API (POST /vlm/infer); unset = off, 0 = any free port.")
    ] = None
    tokens: Annotated[list[TokenConfig], Field(description="Accepted tokens; with none, every connection is refused.")] = []
    allowed_origins: Annotated[
        list[str] | None, Field(description="Allowed browser Origin values for /ws; unset = any (tokens still required).")
    ] = None
    max_message_kb: Annotated[int, Field(ge=1, description="Largest client message except submissions, KiB.")] = 64
    max_submission_mb: Annotated[float, Field(gt=0, description="Largest submission message (base64 image included), MiB.")] = 8.0
    max_image_pixels: Annotated[int, Field(ge=1, description="Largest submitted image, in pixels (width × height).")] = 40_000_000
    rate_per_s: Annotated[
        float, Field(gt=0, description="Client messages per second per connection, and submit/ask/ack per token (sustained).")
    ] = 5.0
    rate_burst: Annotated[int, Field(ge=1, description="Client messages a token may send in a burst.")] = 20
    user_submit_per_min: Annotated[
        float, Field(gt=0, description="Images one fan (submitter token + user name) may submit per minute, sustained.")
    ] = 6.0
    user_submit_burst: Annotated[int, Field(ge=1, description="Images one fan may submit in a burst.")] = 3
    abuse_limit: Annotated[int, Field(ge=1, description="Bad messages in a minute after which a connection is closed.")] = 20
    client_queue: Annotated[int, Field(ge=10, description="Events waiting for one client before it counts as lagging.")] = 10_000
    replay_page: Annotated[int, Field(ge=10, description="Events per frame when replaying history.")] = 500
    auth_failures_per_min: Annotated[
        float, Field(gt=0, description="Failed authentications one address may make per minute (sustained); then 429, unlogged.")
    ] = 10.0
    auth_failures_burst: Annotated[int, Field(ge=1, description="Failed authentications one address may make at once.")] = 20
    http_per_s: Annotated[
        float,
        Field(
            gt=0,
            description="Requests per second per token on the HTTP routes (frames, reports, search, streams); a console "
            "showing N streams makes about N + 1 a second, and desks may share a token.",
        ),
    ] = 100.0
    http_burst: Annotated[int, Field(ge=1, description="HTTP requests a token may make in a burst.")] = 500


class StoreConfig(_Section):
    retention_days: Annotated[float | None, Field(gt=0, description="Delete events older than this many days; unset = keep.")] = 30.0
    retention_mb: Annotated[
        float | None, Field(gt=0, description="Keep the database plus evidence images under this size (MiB), oldest first.")
    ] = 2048.0
    min_free_mb: Annotated[
        float | None,
        Field(
            ge=0,
            description="Keep this much space (MiB) free on the data disk: below it the oldest thumbnails, then events with "
            "their evidence, are deleted (checked every second), before a full disk refuses writes; unset = no floor.",
        ),
    ] = 256.0
    thumbnail_every_s: Annotated[
        float | None,
        Field(
            gt=0,
            description="Without the vision encoder, keep a thumbnail of an analysed frame at most this often per stream "
            "(stream seconds) for `streamwatch summary`; unset = none.",
        ),
    ] = 20.0


class ClusterConfig(_Section):
    nats: Annotated[
        list[str],
        Field(description="NATS server URLs (nats://host:port) of the JetStream cluster; empty = cluster mode off (single box, SQLite)."),
    ] = []
    name: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_-]{1,32}$",
            description="Prefix of this cluster's buckets and streams (several clusters may share one NATS).",
        ),
    ] = "sw"
    worker_id: Annotated[
        str | None, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="This worker's name in leases; unset = host name and process id.")
    ] = None
    capacity: Annotated[int, Field(ge=0, le=1000, description="Streams this worker runs at most (0: a gateway that runs none).")] = 8
    lease_ttl_s: Annotated[
        float, Field(ge=1, le=120, description="A stream lease not renewed for this long expires and another worker takes the stream.")
    ] = 4.0
    renew_s: Annotated[float, Field(gt=0, le=30, description="How often a worker renews its leases and looks for unleased streams.")] = 1.0
    rebalance: Annotated[
        bool,
        Field(
            description="Move running streams to a worker below an even share (one at a time from a worker above it, each a short"
            " monitoring_gap), so a new or returning worker gets its share; false: leases stay where they are."
        ),
    ] = True
    rebalance_after_s: Annotated[
        float, Field(ge=0, le=3600, description="A worker must have been a member this long before running streams are moved to it.")
    ] = 15.0
    placement: Annotated[
        Literal["cost", "count"],
        Field(
            description="How streams are spread: cost = by each stream's measured CPU cost against each worker's cpu_budget"
            " (counts until every worker publishes a budget); count = an even number of streams per worker."
        ),
    ] = "cost"
    cpu_budget: Annotated[
        float,
        Field(
            ge=0,
            le=1024,
            description="CPU seconds per second this worker's streams may use together (placement by cost); 0 = 80% of its cores.",
        ),
    ] = 0.0
    cost_window_s: Annotated[
        float, Field(gt=0, le=600, description="A stream's CPU cost is measured over windows of this many seconds (EWMA-smoothed).")
    ] = 5.0
    rebalance_margin: Annotated[
        float,
        Field(
            gt=0,
            le=10,
            description="Placement by cost moves a running stream when the busiest worker's load/budget exceeds the least busy one's"
            " by more than this (or its own budget).",
        ),
    ] = 0.2
    move_cooldown_s: Annotated[
        float,
        Field(
            ge=0, le=3600, description="A stream that moved (load, drain, dead worker) is not moved again to even the load for this long."
        ),
    ] = 60.0
    replicas: Annotated[
        int, Field(ge=1, le=5, description="JetStream replicas of the event stream and buckets (capped at the servers present).")
    ] = 3
    connect_timeout_s: Annotated[
        float, Field(gt=0, description="At start, keep retrying an unreachable NATS this long before giving up with an error.")
    ] = 30.0
    dedupe_window_s: Annotated[
        float, Field(ge=1, le=86400, description="JetStream publish dedupe window: a retried event within it is stored once.")
    ] = 120.0
    max_age_days: Annotated[
        float, Field(gt=0, description="Events older than this leave the JetStream stream (gateways keep their own copy).")
    ] = 30.0
    vlm_budget: Annotated[
        dict[str, int],
        Field(description="Model id → VLM requests in flight across the whole cluster (unset model: its registry concurrency)."),
    ] = {}
    roles: Annotated[
        list[Literal["reply", "qa"]],
        Field(
            description="Audience requests this worker takes from the cluster's work queue: reply (fans' images), qa (live questions);"
            " empty: none (gateways ignore it)."
        ),
    ] = ["reply", "qa"]
    answer_concurrency: Annotated[
        int, Field(ge=1, le=64, description="Audience requests one worker answers at once (each VLM call also takes a cluster slot).")
    ] = 2
    request_ack_wait_s: Annotated[
        float,
        Field(
            ge=1,
            le=600,
            description="A request a worker took and stopped reporting progress on (it died) goes to another worker after this long.",
        ),
    ] = 30.0
    request_max_deliver: Annotated[
        int, Field(ge=1, le=100, description="Times one audience request is handed out at most (workers dying on it) before it is dropped.")
    ] = 5

    @model_validator(mode="after")
    def _answer_once(self) -> ClusterConfig:
        if self.request_ack_wait_s >= self.dedupe_window_s:
            raise ValueError(
                f"cluster.request_ack_wait_s ({self.request_ack_wait_s:g}) must be below cluster.dedupe_window_s"
                f" ({self.dedupe_window_s:g}): a request answered again after the window would reach the fan twice"
            )
        return self


class Settings(BaseSettings):
    """The whole streamwatch configuration."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMWATCH_", env_nested_delimiter="__", extra="forbid", frozen=True, validate_default=True
    )

    data_dir: Annotated[Path, Field(description="Where events, evidence images and reports are stored.")] = Path("./streamwatch-data")
    log_level: Annotated[str, Field(pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Logging level.")] = "INFO"
    ingest: Annotated[IngestConfig, Field(description="How sources are opened, decoded and reconnected.")] = IngestConfig()
    sampling: Annotated[SamplingConfig, Field(description="Frame sampling, quality gate and dedupe.")] = SamplingConfig()
    streams: Annotated[list[StreamConfig], Field(description="Streams to watch.")] = []
    server: Annotated[ServerConfig, Field(description="WebSocket/HTTP server, tokens and client limits.")] = ServerConfig()
    store: Annotated[StoreConfig, Field(description="Event store retention.")] = StoreConfig()
    analysis: Annotated[AnalysisConfig, Field(description="Local analyzers, policy and result cache.")] = AnalysisConfig()
    vlm: Annotated[VLMConfig, Field(description="Vision-language tier: persona and audience replies.")] = VLMConfig()
    cluster: Annotated[ClusterConfig, Field(description="Cluster mode on NATS JetStream (off by default).")] = ClusterConfig()
    webhooks: Annotated[list[WebhookConfig], Field(description="Signed webhook endpoints events are delivered to (durable outbox).")] = []
    mqtt: Annotated[MqttConfig, Field(description="MQTT publishing of events and stream states (off unless host is set).")] = MqttConfig()
    actions: Annotated[ActionsConfig, Field(description="Actions on the stream: cut (nginx-rtmp, SRS), warn, HTTP actions.")] = (
        ActionsConfig()
    )
    ui: Annotated[UIConfig, Field(description="Language and time zone of alert texts, health texts and reports.")] = UIConfig()

    @model_validator(mode="after")
    def _unique_ids(self) -> Settings:
        ids = [s.id for s in self.streams]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate stream ids: {sorted(dup)}")
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate webhook names: {sorted({n for n in names if names.count(n) > 1})}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges file < env < overrides itself; direct construction sees init + env.
        return (init_settings, env_settings)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from e


# top-level keys of the other files streamwatch reads, which people pass where a config is expected
_NOT_A_CONFIG = (
    (
        {"rule", "lists", "t2s"},
        "a policy file",
        "check it with `streamwatch check-config --policy {path}`; use it with `--policy {path}` or analysis.policy",
    ),
    ({"label"}, "a zero-shot labels file", "point analysis.encoder.labels at it"),
    ({"personality", "tone", "reply_length"}, "a persona file", "point vlm.persona at it"),
)


def _not_a_config(path: Path, values: dict[str, Any]) -> str | None:
    """Why the file at ``path`` is not a config (a policy, labels or persona file), or None."""
    keys = set(values) - set(Settings.model_fields)
    for marks, what, hint in _NOT_A_CONFIG:
        if keys & marks:
            return f"{path} is {what}, not a streamwatch config: {hint.format(path=path)} (an example config: `streamwatch init`)"
    return None


def load_settings(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Validate the configuration once. Priority: TOML file < ``STREAMWATCH_*`` env < ``overrides``.

    Raises ConfigError naming the file, the key and its line; a policy, labels or persona file given
    as the config is named as such, with the command or key that takes it.
    """
    if path is not None and Path(path).suffix == ".json":
        hint = "a model registry .json goes in vlm.registry; `streamwatch init` writes an example config"
        raise ConfigError(f"{path}: streamwatch configs are TOML ({hint})")
    file_values, text = read_toml(Path(path)) if path else ({}, "")
    where = str(path) if path else "environment/options"
    try:
        env_values = EnvSettingsSource(Settings)()
        values = _deep_merge(_deep_merge(file_values, env_values), overrides or {})
        return Settings.model_validate(values)
    except ValidationError as e:
        other = _not_a_config(Path(path), file_values) if path else None
        sources = env_names(Settings.model_config.get("env_prefix", ""), overrides or {})
        raise ConfigError(other or format_validation_error(e, where, text, model=Settings, sources=sources)) from e
    except ValueError as e:  # malformed JSON in a complex env var
        raise ConfigError(f"invalid configuration in environment: {e}") from e


M = TypeVar("M", bound=BaseModel)


def load_toml_model(path: Path, model: type[M], what: str, error: type[Exception] = ConfigError) -> M:
    """Read a TOML file into a pydantic model; ``error`` names the file, and the key's line when invalid."""
    try:
        text = path.read_text(encoding="utf-8")
        return model.model_validate(tomllib.loads(text))
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: {e}") from e
    except ValidationError as e:
        message = format_validation_error(e, str(path), text, model=model)
        raise error(message.replace("invalid configuration", f"invalid {what}")) from e
