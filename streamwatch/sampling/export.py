"""Writes sampling results to disk: kept frames as JPEG, every sample as one JSONL line (the edge)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import cv2

from streamwatch.errors import SamplingError
from streamwatch.events.model import HealthEvent
from streamwatch.events.storage import storage_error
from streamwatch.sampling.sampler import Sample


def sample_record(s: Sample) -> dict[str, Any]:
    q = s.quality
    return {
        "type": "sample",
        "stream": s.frame.stream,
        "seq": s.frame.seq,
        "offset": round(s.offset, 3),
        "wall": round(s.frame.wall, 3),
        "decision": s.decision.value,
        "phash": str(s.phash),
        "distance": s.distance,
        "keyframe": s.frame.keyframe,
        "mean": round(q.mean, 1),
        "std": round(q.std, 1),
        "sharpness": round(q.sharpness, 1),
        "changed": None if q.changed is None else round(q.changed, 4),
        # region-level change: tiles of new content vs the last kept frame ([row, col, score]), and the
        # number of tiles that moved since the previous sample (0 = still: frozen after frozen_after_s)
        "regions": None if s.change is None else s.change.record(),
        "moved_tiles": None if s.moved is None else s.moved.count,
    }


def health_record(e: HealthEvent) -> dict[str, Any]:
    return {
        "type": "health",
        "stream": e.stream,
        "kind": e.kind.value,
        "state": e.state.value if e.state else None,
        "active": e.active,
        "offset": round(e.offset, 3),
        "at": round(e.at, 3),
        "gap_s": e.gap_s,
        "duration_s": e.duration_s,
        "reason": e.reason,
        "text": e.describe(),
    }


class SampleWriter:
    """``frames/<offset>_<seq>.jpg`` for kept samples and ``samples.jsonl`` for everything.

    Each record is written as one whole line and flushed at once (after its JPEG is on disk), so the
    log can be followed while a live run goes on, and a run that is killed leaves valid JSONL of
    everything before the kill.
    """

    def __init__(self, out_dir: Path, max_side: int = 512, quality: int = 90) -> None:
        self.dir = out_dir
        self.max_side, self.quality = max_side, quality
        try:
            (out_dir / "frames").mkdir(parents=True, exist_ok=True)
            self._log: IO[str] = (out_dir / "samples.jsonl").open("w", encoding="utf-8")
        except OSError as e:
            raise _failed(e, f"write samples to {out_dir}") from e

    def write(self, item: Sample | HealthEvent) -> None:
        """Errors: StorageError when the disk is full (the lines before are whole), else SamplingError."""
        try:
            self._write(item)
        except OSError as e:
            raise _failed(e, f"write samples to {self.dir}") from e

    def _write(self, item: Sample | HealthEvent) -> None:
        if isinstance(item, HealthEvent):
            rec = health_record(item)
        else:
            rec = sample_record(item)
            if item.kept:
                name = f"frames/{item.offset:09.3f}_{item.frame.seq:06d}.jpg"
                rgb = item.frame.rgb(self.max_side)
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if ok:
                    (self.dir / name).write_bytes(buf.tobytes())
                    rec["file"] = name
        self._log.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._log.flush()

    def close(self) -> None:
        self._log.close()


def _failed(e: OSError, doing: str) -> Exception:
    return storage_error(e, "files", doing) or SamplingError(f"cannot {doing}: {e}")
