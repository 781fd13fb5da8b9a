"""Reader (decoder) threads at a lower CPU priority than analysis (``ingest.reader_nice``, issue 22).

On 2 cores with 12 live 1080p shows, the readers' decoding and the analysis pool fought for the cores:
an OCR call took 2.3-3.0x its CPU time in wall time and a burst of scene cuts queued for seconds.
With the readers at nice +10 the analysis runs first and the decoders catch up from their buffers
(tools/bench/streams.py). Here: the nice value the kernel reports for the reader thread of a real
file read through :func:`aiter_reader`, and that nothing else in the process is lowered."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from conftest import Clip

from streamwatch.config import IngestConfig, load_settings
from streamwatch.ingest import Frame, FrameReader, parse_source
from streamwatch.ingest.aio import aiter_reader, lower_priority

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread nice is read from /proc (Linux)")


def nice_of(tid: int) -> int:
    """The thread's nice value from ``/proc/self/task/TID/stat`` (field 19)."""
    text = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[16])


def test_lower_priority_lowers_only_the_calling_thread() -> None:
    seen: dict[str, int] = {}

    def run(nice: int, key: str) -> None:
        lower_priority(nice)
        seen[key] = nice_of(threading.get_native_id())

    base = nice_of(threading.get_native_id())
    for nice, key in ((5, "five"), (0, "zero"), (40, "capped")):
        t = threading.Thread(target=run, args=(nice, key))
        t.start()
        t.join()
    assert seen == {"five": min(19, base + 5), "zero": base, "capped": 19}
    assert nice_of(threading.get_native_id()) == base  # the caller of the threads is untouched


def test_the_reader_thread_of_a_real_file_runs_at_the_configured_nice(short_clip: Clip) -> None:
    base = nice_of(threading.get_native_id())

    async def read(cfg: IngestConfig) -> tuple[int, int]:
        reader = FrameReader(parse_source(str(short_clip.path)), "prio", cfg)
        async with asyncio.timeout(30):
            async for item in aiter_reader(reader, maxsize=4):
                if isinstance(item, Frame):
                    t = next(t for t in threading.enumerate() if t.name == "ingest-prio")
                    assert t.native_id is not None
                    return nice_of(t.native_id), nice_of(threading.get_native_id())
        raise AssertionError("no frame read")

    reader_nice, loop_nice = asyncio.run(read(IngestConfig(reader_nice=7)))
    assert (reader_nice, loop_nice) == (min(19, base + 7), base)
    assert asyncio.run(read(IngestConfig(reader_nice=0)))[0] == base
    assert load_settings(None, {}).ingest.reader_nice == 10  # on by default
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the process (its main thread) is untouched
