"""The labelled clip through ingest + sampling, file formats, damaged files, decode modes."""

from __future__ import annotations

import time
from pathlib import Path

import av
import pytest
from conftest import Clip

from streamwatch.app import build_pipeline
from streamwatch.config import DecodeMode, IngestConfig, Settings, StreamConfig, load_settings
from streamwatch.errors import NoVideoStream, SourceCorrupt, SourceOpenError
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.ingest import Frame, FrameReader, parse_source
from streamwatch.sampling import Decision, Sample

EXPECTED = {
    "moving": {Decision.KEPT},
    "cuts": {Decision.KEPT},
    # a still slide whose ticker band scrolls: new content is only ever found in the ticker's tiles
    "static": {Decision.DUPLICATE, Decision.KEPT},
    "black": {Decision.BLACK},
    "frozen": {Decision.FROZEN},
    "blurred": {Decision.BLURRED},
}


def run(source: Path | str, **overrides: object) -> tuple[list[Sample], list[HealthEvent]]:
    settings = load_settings(None, dict(overrides))
    p = build_pipeline(StreamConfig(id="t", source=str(source)), settings)
    samples, health = [], []
    for item in p.run():
        (samples if isinstance(item, Sample) else health).append(item)
    return samples, health


def test_labelled_clip_decisions_match_labels(clip: Clip) -> None:
    samples, health = run(clip.path)
    assert len(samples) == 40
    wrong = []
    for s in samples:
        kind = clip.kind_at(s.offset)
        assert kind is not None
        # first sample of a static/frozen segment is new content: kept; the frozen one becomes
        # FROZEN only after frozen_after_s (duplicate until then).
        seg = next(x for x in clip.labels["segments"] if x["start"] <= s.offset < x["end"])
        into = s.offset - seg["start"]
        allowed = set(EXPECTED[kind])
        if kind in ("static", "frozen") and into < 0.5:
            allowed = {Decision.KEPT}
        elif kind == "frozen" and into < 2.0 - 1e-6:
            allowed = {Decision.DUPLICATE}
        if s.decision not in allowed:
            wrong.append((round(s.offset, 2), kind, s.decision.value))
        if kind == "static" and into >= 0.5 and s.change is not None:
            rows = s.change.changed.shape[0]
            if any(r < rows - 1 for r, _c, _score in s.change.tiles()):  # only the ticker band (last tile row)
                wrong.append((round(s.offset, 2), kind, f"changed tiles outside the ticker: {s.change.tiles()}"))
    assert not wrong, wrong
    static = [s for s in samples if clip.kind_at(s.offset) == "static"]
    assert sum(s.change is not None and s.change.any for s in static) >= 3  # the scrolling ticker is seen
    # offsets are stream time, one per second
    assert [round(s.offset) for s in samples] == list(range(40))
    # sustained black and frozen periods are health incidents with their durations
    periods = [(h.kind, h.active, h.offset, h.duration_s) for h in health if h.kind is not HealthKind.STATE]
    assert (HealthKind.BLACK, True, 16.0, None) in [(k, a, round(o, 1), d) for k, a, o, d in periods]
    frozen_end = [h for h in health if h.kind is HealthKind.FROZEN and h.active is False]
    assert len(frozen_end) == 1 and frozen_end[0].duration_s == pytest.approx(8.0, abs=1.01)
    black_end = [h for h in health if h.kind is HealthKind.BLACK and h.active is False]
    assert black_end[0].duration_s == pytest.approx(4.0, abs=1.01)
    states = [h.state for h in health if h.kind is HealthKind.STATE]
    assert states == [StreamState.LIVE, StreamState.STOPPED]


def test_dedupe_heartbeat_and_radius_are_configurable(clip: Clip) -> None:
    samples, _ = run(clip.path, sampling={"heartbeat_s": 2.0, "regions": False})
    static = [s for s in samples if clip.kind_at(s.offset) == "static"]
    assert sum(s.decision is Decision.KEPT for s in static) >= 3  # one per 2 s heartbeat
    samples, _ = run(clip.path, sampling={"dedupe_radius": 64, "regions": False})
    moving = [s for s in samples if clip.kind_at(s.offset) == "moving" and s.offset > 1]
    assert any(s.decision is Decision.DUPLICATE for s in moving)


@pytest.mark.parametrize("mode", ["keyframes", "auto"])
def test_keyframe_mode_decodes_only_keyframes(clip: Clip, mode: str) -> None:
    cfg = IngestConfig(decode=DecodeMode(mode))
    reader = FrameReader(parse_source(str(clip.path)), "t", cfg, every_s=2.0)
    frames = [f for f in reader if isinstance(f, Frame)]
    assert reader.keyframe_interval == pytest.approx(2.0, abs=0.05)
    # after the first GOP (measured with reference decoding) only keyframes are decoded
    late = [f for f in frames if f.offset > 4.5]
    assert late and all(f.keyframe for f in late)
    assert reader.stats.decoded < 30 * 4 + 25


def test_reference_mode_skips_b_frames_but_keeps_one_frame_per_second(clip: Clip) -> None:
    full = FrameReader(parse_source(str(clip.path)), "t", IngestConfig(decode=DecodeMode.FULL), every_s=1.0)
    ref = FrameReader(parse_source(str(clip.path)), "t", IngestConfig(decode=DecodeMode.REFERENCE), every_s=1.0)
    nf = sum(isinstance(f, Frame) for f in full)
    nr = sum(isinstance(f, Frame) for f in ref)
    assert full.stats.decoded == 1200
    assert ref.stats.decoded < 0.8 * full.stats.decoded
    assert nf == len([f for f in FrameReader(parse_source(str(clip.path)), "t", IngestConfig(), every_s=None) if isinstance(f, Frame)])
    assert nr == 1200 - (1200 - ref.stats.decoded)  # without keep(), every decoded frame is emitted


@pytest.mark.parametrize("fmt", ["flv", "ts", "mkv"])
def test_other_containers(clip: Clip, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"clip.{fmt}"
    with av.open(str(clip.path)) as src, av.open(str(out), "w") as dst:
        vs = src.streams.video[0]
        ds = dst.add_stream_from_template(vs)
        for pkt in src.demux(vs):
            if pkt.dts is None:
                continue
            pkt.stream = ds
            dst.mux(pkt)
    samples, _ = run(out)
    assert len(samples) >= 39
    assert sum(s.decision is Decision.BLACK for s in samples) == 4


def test_truncated_file_delivers_frames_before_the_damage(clip: Clip, tmp_path: Path) -> None:
    data = clip.path.read_bytes()
    ts = tmp_path / "cut.ts"
    with av.open(str(clip.path)) as src, av.open(str(ts), "w") as dst:
        vs = src.streams.video[0]
        ds = dst.add_stream_from_template(vs)
        for pkt in src.demux(vs):
            if pkt.dts is not None:
                pkt.stream = ds
                dst.mux(pkt)
    raw = ts.read_bytes()
    half = tmp_path / "half.ts"
    half.write_bytes(raw[: len(raw) // 2])
    samples, health = run(half)
    assert 10 <= len(samples) < 40  # frames before the cut are delivered
    assert health[-1].state is StreamState.STOPPED
    # garbage in the middle of the file: undecodable packets are skipped, the rest still comes
    junk = tmp_path / "junk.ts"
    mid = len(raw) // 2
    junk.write_bytes(raw[:mid] + bytes(range(256)) * 400 + raw[mid:])
    samples, _ = run(junk)
    assert len(samples) >= 35
    # an mp4 cut before its index cannot be opened: clear error naming the file
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises((SourceOpenError, SourceCorrupt)) as e:
        run(bad)
    assert "cut.mp4" in str(e.value)


def test_missing_and_non_video_files(tmp_path: Path) -> None:
    with pytest.raises(SourceOpenError, match=r"nope\.mp4"):
        run(tmp_path / "nope.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    with pytest.raises(SourceOpenError):
        run(text)
    audio = tmp_path / "tone.mkv"
    with av.open(str(audio), "w") as out:
        st = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        import numpy as np

        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for pkt in st.encode(frame):
            out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    with pytest.raises(NoVideoStream):
        run(audio)


def test_realtime_pacing(short_clip: Clip) -> None:
    settings = Settings.model_validate({"ingest": {"realtime": True}})
    reader = FrameReader(parse_source(str(short_clip.path)), "t", settings.ingest, every_s=1.0)
    t0 = time.monotonic()
    offsets = []
    for item in reader:
        if isinstance(item, Frame):
            offsets.append((item.offset, time.monotonic() - t0))
            if item.offset >= 3.0:
                break
    assert offsets[-1][1] >= 2.8  # 3 s of stream took ~3 s of wall time
    assert all(wall >= off - 0.1 for off, wall in offsets)
