"""Where the CPU goes (per stream and stage) and the one CPU budget: pure accounting, the budget reaching
ONNX Runtime, OpenCV and the decoder, and the counters of a real daemon run on a short encoded clip."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from streamwatch.runtime.cpu_account import STAGES, CpuAccount, Stage, cpu_budget, per_stream_hour, weights

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
from make_concert_clip import write_concert_clip  # noqa: E402

CPU_METRIC = "streamwatch_stage_cpu_seconds_total"


def _burn(seconds: float) -> int:
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


@pytest.mark.parametrize("cpu_threads", [0, 1, 2, 3, 8, 16])
@pytest.mark.parametrize("cores", [None, 1, 2, 16])
@pytest.mark.parametrize("executor", [0, 1, 2, 5])
def test_budget_is_one_number_shared_by_calls(cpu_threads: int, cores: int | None, executor: int) -> None:
    b = cpu_budget(cpu_threads, cores, executor)
    assert b.threads == (cpu_threads or cores or 1)
    assert b.executor == (executor or b.threads) and b.decoder == b.threads
    assert b.per_call >= 1 and b.executor * b.per_call <= max(b.threads, b.executor)
    if executor == 0:
        assert b.per_call == 1  # as many calls as threads, each on one
    assert str(b.threads) in b.describe()


def test_account_measures_thread_cpu_not_wall_time() -> None:
    seen: list[tuple[str, str, float]] = []
    acc = CpuAccount(lambda s, st, sec: seen.append((s, st, sec)))
    with acc.measure("a", Stage.QR):
        time.sleep(0.2)  # waiting costs no CPU
    with acc.measure("a", Stage.NUDITY):
        _burn(0.05)
    spent = acc.spent("a")
    assert spent.get("qr", 0.0) < 0.02
    assert 0.04 <= spent["nudity"] <= 0.2
    assert sum(sec for _, st, sec in seen if st == "nudity") == pytest.approx(spent["nudity"])


def test_account_is_per_thread_and_thread_safe() -> None:
    acc = CpuAccount()

    def work(i: int) -> None:
        for _ in range(200):
            acc.add(f"s{i % 3}", Stage.DECODE, 0.001)
        with acc.measure(f"s{i % 3}", Stage.PHASH):
            _burn(0.01)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert acc.streams() == ["s0", "s1", "s2"]
    for s in acc.streams():
        assert acc.spent(s)["decode"] == pytest.approx(0.4)
        assert acc.spent(s)["phash"] >= 0.015  # two threads' burns each, never a neighbour's
    assert acc.spent()["decode"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("streams", "sizes"),
    [(["a"], [10]), (["a", "b"], [1, 3]), (["a", "b", "a", "c"], [5, 5, 5, 5]), (["x", "y", "x"], [100, 1, 0])],
)
def test_shared_work_is_split_by_weight_and_sums_to_the_whole(streams: list[str], sizes: list[int]) -> None:
    acc = CpuAccount()
    acc.share(weights(streams, sizes), Stage.OCR_DETECTION, 2.0)
    spent = {s: acc.spent(s).get("ocr_detection", 0.0) for s in set(streams)}
    assert sum(spent.values()) == pytest.approx(2.0)
    total = sum(sizes)
    for s in set(streams):
        assert spent[s] == pytest.approx(2.0 * sum(n for x, n in zip(streams, sizes, strict=True) if x == s) / total)


def test_per_stream_hour() -> None:
    assert per_stream_hour({"decode": 36.0, "qr": 1.8}, 7200.0) == {"decode": 18.0, "qr": 0.9}
    assert per_stream_hour({"decode": 1.0}, 0.0) == {}


@pytest.mark.parametrize(("cpu_threads", "threads"), [(1, 0), (2, 1), (2, 0)])
def test_the_budget_reaches_onnx_sessions_opencv_and_the_decoder(clip: Any, cpu_threads: int, threads: int) -> None:
    from streamwatch.analysis.base import create
    from streamwatch.analysis.detectors import AnalyzerSettings
    from streamwatch.config import StreamConfig, load_settings
    from streamwatch.runtime.pipeline import build_pipeline
    from streamwatch.runtime.services import apply_budget

    settings = load_settings(None, {"data_dir": "/tmp/unused", "analysis": {"cpu_threads": cpu_threads, "threads": threads}})
    before = cv2.getNumThreads()
    try:
        budget = apply_budget(settings)
        assert budget.threads == cpu_threads and budget.executor == (threads or cpu_threads)
        assert cv2.getNumThreads() == budget.per_call
    finally:
        cv2.setNumThreads(before)
    a = AnalyzerSettings(device="cpu", threads=budget.per_call)
    nudity: Any = create("nudity", a)
    assert nudity.session.get_session_options().intra_op_num_threads == budget.per_call
    assert nudity.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    ocr: Any = create("ocr", a)
    assert ocr.engine.text_det.infer.session.get_session_options().intra_op_num_threads == budget.per_call
    assert ocr.engine.text_rec.session.session.get_session_options().intra_op_num_threads == budget.per_call
    pipeline = build_pipeline(StreamConfig(id="b", source=str(clip.path)), settings)
    for n, _ in enumerate(pipeline.run()):
        if n > 3:
            break
    assert pipeline.reader.stats.decoder_threads == cpu_threads


@pytest.fixture(scope="module")
def short_concert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s: a caption (OCR finds and reads it), then a QR code on another picture."""
    path = tmp_path_factory.mktemp("cpu") / "short.mp4"
    timeline = (
        (3.0, "drift", "coffee", "关注主播 加微信 xiaomei88 领福利", "", "contact_spam"),
        (3.0, "drift", "chelsea", "", "https://evil.example/join?g=88", "qr_code"),
    )
    write_concert_clip(path, timeline=timeline)
    return path


@pytest.mark.parametrize("analyzers", [["nudity", "ocr", "qr"], ["qr"], ["ocr"]])
def test_counters_grow_for_each_stage_that_runs_and_stay_zero_for_the_others(
    short_concert: Path, tmp_path: Path, analyzers: list[str]
) -> None:
    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "s1", "source": str(short_concert)}, {"id": "s2", "source": str(short_concert)}],
            "analysis": {"analyzers": analyzers, "cpu_threads": 1},  # one thread each: thread_time sees all the work
        },
    )
    daemon = Daemon(settings, serve=False)
    p0 = time.process_time()
    asyncio.run(daemon.run())
    process = time.process_time() - p0
    reg = daemon.metrics.registry
    ran = {"decode", "conversion", "regions", "phash", "policy", "store", "delivery"}
    ran |= {"ocr_detection", "ocr_recognition"} if "ocr" in analyzers else set()
    ran |= {a for a in analyzers if a != "ocr"}
    total = 0.0
    for sid in ("s1", "s2"):
        for stage in STAGES:
            v = reg.get_sample_value(CPU_METRIC, {"stream": sid, "stage": stage})
            if stage in ran:
                assert v is not None and v > 0, (sid, stage, v)
                total += v
            else:
                assert v is None, (sid, stage, v)  # a disabled analyzer (or no encoder) costs nothing
        assert daemon.svc.cpu.spent(sid)["decode"] == pytest.approx(reg.get_sample_value(CPU_METRIC, {"stream": sid, "stage": "decode"}))
    assert total <= process * (os.cpu_count() or 1) + 0.05  # thread CPU time never exceeds the process's
