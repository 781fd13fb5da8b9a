"""CPU time by OS thread (/proc/self/task): a file decoder's frame threads are counted to its ``decode``
stage, a live source decodes on its reader thread, and conversions start no threads of their own."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from streamwatch.config import StreamConfig, load_settings
from streamwatch.ingest.decoding import decoder_thread_count
from streamwatch.ingest.frame import Frame
from streamwatch.runtime.cpu_account import CpuAccount
from streamwatch.runtime.pipeline import build_pipeline
from streamwatch.runtime.thread_cpu import ThreadCpu, ThreadGroup, by_group, parse_stat, snapshot, thread_cpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_concert_clip import write_concert_clip

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def clip720(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tc") / "c.mp4"
    write_concert_clip(path, width=1280, height=720, fps=30)
    return path


def test_parse_stat_reads_names_with_spaces_and_parentheses() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    line = f"123 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 {3 * tick} {tick} 0 0 20 0 1 0"
    assert parse_stat(line) == ("a (b) c", 4.0)


def test_this_thread_is_seen_and_its_cpu_grows() -> None:
    me = threading.get_native_id()
    before = thread_cpu(me)
    end = time.thread_time() + 0.15
    while time.thread_time() < end:
        pass
    after = thread_cpu(me)
    assert before is not None and after is not None and me in snapshot()
    assert after.seconds - before.seconds >= 0.05


def test_by_group_sums_what_each_thread_spent_in_between() -> None:
    before = {1: ThreadCpu(1, "python", 5.0), 2: ThreadCpu(2, "av:h264:df0", 1.0)}
    after = {1: ThreadCpu(1, "python", 6.5), 2: ThreadCpu(2, "av:h264:df0", 3.0), 3: ThreadCpu(3, "av:h264:df1", 0.5)}
    assert by_group(before, after, lambda t: t.name[:3]) == {"pyt": 1.5, "av:": 2.5}


def test_live_sources_decode_on_the_reader_thread_files_with_the_budget() -> None:
    assert decoder_thread_count(True, 2) == 1 and decoder_thread_count(True, 0) == 1
    assert decoder_thread_count(False, 2) == 2 and decoder_thread_count(False, 0) == 0


def test_a_file_decoders_frame_threads_are_counted_to_decode(clip720: Path) -> None:
    settings = load_settings(None, {"data_dir": "/tmp/unused", "analysis": {"cpu_threads": 2}, "ingest": {"decode": "full"}})
    cpu = CpuAccount()
    pipeline = build_pipeline(StreamConfig(id="f", source=str(clip720)), settings, cpu)
    t0 = time.thread_time()
    p0 = time.process_time()
    for _ in pipeline.run():
        pass
    mine, process = time.thread_time() - t0, time.process_time() - p0
    decode = cpu.spent("f")["decode"]
    assert pipeline.reader.stats.decoder_threads == 2
    # the frame threads did most of the decoding: the reader thread alone is far below the stage
    assert decode > 1.3 * (mine - sum(v for k, v in cpu.spent("f").items() if k != "decode"))
    assert decode <= process + 0.05 and decode >= 0.4 * process  # ~0.65-0.8 alone; other pytest threads share the process


def test_thread_group_adopts_only_threads_started_inside(clip720: Path) -> None:
    group = ThreadGroup("av:")
    with av.open(str(clip720)) as c:
        vs = c.streams.video[0]
        vs.thread_type, vs.codec_context.thread_count = "FRAME", 2
        packets = iter(c.demux(vs))
        with group.adopt_new():
            next(packets).decode()
        assert group.size >= 1
        for p in packets:
            p.decode()
        assert group.take() > 0.0
        assert group.take() < 0.02  # nothing new since


def test_conversions_start_no_threads(clip720: Path) -> None:
    with av.open(str(clip720)) as c:
        frames = [Frame("c", i, 0.0, 0.0, 0.0, None, True, f) for i, f in zip(range(3), c.decode(video=0), strict=False)]
    started: set[int] = set()
    before = set(snapshot())
    for f in frames * 4:
        f.rgb(640)
        f.gray()
        f.luminance()
        started |= set(snapshot()) - before
    assert not started


def test_openblas_pools_are_found_in_the_maps_and_sized_to_the_budget() -> None:
    import ctypes

    import cv2  # noqa: F401  (loads OpenCV's OpenBLAS)

    from streamwatch.runtime.blas import limit_blas, loaded_openblas

    maps = "7f00-7f01 r-xp 00000000 08:01 42 /x/opencv.libs/libopenblasp-r0.so\n7f02-7f03 r--p 0 00:00 0 [heap]\n"
    assert loaded_openblas(maps) == ["/x/opencv.libs/libopenblasp-r0.so"]
    changed = limit_blas(1)
    assert any("opencv" in p for p in changed)
    for path in changed:
        lib = ctypes.CDLL(path)
        get = getattr(lib, "openblas_get_num_threads", None) or getattr(lib, "scipy_openblas_get_num_threads64_", None)
        if get is not None:
            assert get() == 1
