"""Frame sampling: interval sampler, quality gate, perceptual hash and dedupe (pure, no asyncio)."""

from streamwatch.sampling.dedupe import Deduper
from streamwatch.sampling.interval import IntervalSampler
from streamwatch.sampling.phash import PHash, phash_luma
from streamwatch.sampling.quality import QualityGate, QualityReport
from streamwatch.sampling.sampler import Decision, Sample, Sampler

__all__ = [
    "Decision",
    "Deduper",
    "IntervalSampler",
    "PHash",
    "QualityGate",
    "QualityReport",
    "Sample",
    "Sampler",
    "phash_luma",
]
