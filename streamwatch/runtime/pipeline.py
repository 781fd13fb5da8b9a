"""The ingest and sampling stages of one stream: a reader (decoder) feeding a sampler.

Blocking (:meth:`StreamPipeline.run`, files, CLI, benchmarks) or on the event loop with the decoder
in its own thread behind a bounded queue (:meth:`StreamPipeline.arun`, the daemon).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from streamwatch.config import Settings, StreamConfig
from streamwatch.events.model import HealthEvent, StreamState
from streamwatch.ingest.aio import aiter_reader
from streamwatch.ingest.frame import Frame
from streamwatch.ingest.preflight import check_tools
from streamwatch.ingest.reader import FrameReader
from streamwatch.ingest.url import parse_source
from streamwatch.runtime.cpu_account import CpuAccount, cpu_budget
from streamwatch.runtime.faults import describe
from streamwatch.sampling.interval import IntervalSampler
from streamwatch.sampling.sampler import Sample, Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SkippedFrame:
    """A decoded frame the sampler could not take (a bug or an odd frame): skipped, the stream goes on."""

    offset: float  # s, show time
    error: Exception


Output = Sample | HealthEvent | SkippedFrame


@dataclass(frozen=True, slots=True)
class StreamPipeline:
    """The ingest and sampling stages of one stream."""

    stream: StreamConfig
    reader: FrameReader
    sampler: Sampler
    interval: IntervalSampler | None = None  # which decoded frames are sampled; its step may be widened while running (overload)

    def _feed(self, item: Frame | HealthEvent) -> Sequence[Output]:
        if isinstance(item, Frame):
            try:
                return self.sampler.feed(item)
            except Exception as e:  # one frame's fault; never the stream's (logged and counted by the consumer)
                return [SkippedFrame(item.offset, e)]
        if item.state is not None and item.state.value in ("stopped", "ended"):
            return [*self.sampler.finish(item.offset, item.at, item.stream), item]
        if item.state is StreamState.LIVE:  # a new connection or publisher: nothing is frozen across the break
            return [*self.sampler.restart(item.offset, item.at, item.stream), item]
        return [item]

    def run(self) -> Iterator[Sample | HealthEvent]:
        """Blocking: samples and health events as they come (files, CLI, benchmarks)."""
        for item in self.reader:
            for out in self._feed(item):
                if isinstance(out, SkippedFrame):
                    logger.warning("[%s] frame at %.2fs skipped: %s", self.stream.id, out.offset, describe(out.error))
                else:
                    yield out

    async def arun(self, maxsize: int) -> AsyncIterator[Output]:
        """The same on the event loop, the decoder in its own thread behind a bounded queue."""
        async for item in aiter_reader(self.reader, maxsize=maxsize):
            for out in self._feed(item):
                yield out


def build_pipeline(stream: StreamConfig, settings: Settings, cpu: CpuAccount | None = None) -> StreamPipeline:
    """Reader + sampler for ``stream`` (decoder threads from the CPU budget; ``cpu`` counts their CPU time
    per stage). Raises ConfigError for a malformed source or a missing relay."""
    every = stream.every_s or settings.sampling.every_s
    interval = IntervalSampler(every)
    spec = parse_source(stream.source, listen=stream.listen)
    check_tools(spec, settings.ingest)  # an SRT source's relay: refused before the stream starts
    a = settings.analysis
    reader = FrameReader(
        spec,
        stream.id,
        settings.ingest,
        every_s=every,
        keep=interval.due,
        max_side=a.max_side,
        decoder_threads=cpu_budget(a.cpu_threads, os.cpu_count(), a.threads).decoder,
        cpu=cpu,
    )
    return StreamPipeline(stream, reader, Sampler(settings.sampling, cpu), interval)
