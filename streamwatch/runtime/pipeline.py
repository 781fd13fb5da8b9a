"""The ingest and sampling stages of one stream: a reader (decoder) feeding a sampler.

Blocking (:meth:`StreamPipeline.run`, files, CLI, benchmarks) or on the event loop with the decoder
in its own thread behind a bounded queue (:meth:`StreamPipeline.arun`, the daemon).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from streamwatch.config import Settings, StreamConfig
from streamwatch.events.model import HealthEvent, StreamState
from streamwatch.ingest.aio import aiter_reader
from streamwatch.ingest.frame import Frame
from streamwatch.ingest.reader import FrameReader
from streamwatch.ingest.url import parse_source
from streamwatch.sampling.interval import IntervalSampler
from streamwatch.sampling.sampler import Sample, Sampler

Output = Sample | HealthEvent


@dataclass(frozen=True, slots=True)
class StreamPipeline:
    """The ingest and sampling stages of one stream."""

    stream: StreamConfig
    reader: FrameReader
    sampler: Sampler

    def _feed(self, item: Frame | HealthEvent) -> list[Output]:
        if isinstance(item, Frame):
            return self.sampler.feed(item)
        if item.state is not None and item.state.value in ("stopped", "ended"):
            return [*self.sampler.finish(item.offset, item.at, item.stream), item]
        if item.state is StreamState.LIVE:  # a new connection or publisher: nothing is frozen across the break
            return [*self.sampler.restart(item.offset, item.at, item.stream), item]
        return [item]

    def run(self) -> Iterator[Output]:
        """Blocking: samples and health events as they come (files, CLI, benchmarks)."""
        for item in self.reader:
            yield from self._feed(item)

    async def arun(self, maxsize: int) -> AsyncIterator[Output]:
        """The same on the event loop, the decoder in its own thread behind a bounded queue."""
        async for item in aiter_reader(self.reader, maxsize=maxsize):
            for out in self._feed(item):
                yield out


def build_pipeline(stream: StreamConfig, settings: Settings) -> StreamPipeline:
    """Reader + sampler for ``stream``. Raises ConfigError for a malformed source."""
    every = stream.every_s or settings.sampling.every_s
    interval = IntervalSampler(every)
    spec = parse_source(stream.source, listen=stream.listen)
    reader = FrameReader(spec, stream.id, settings.ingest, every_s=every, keep=interval.due)
    return StreamPipeline(stream, reader, Sampler(settings.sampling))
