"""Small text read again at the source resolution (pure geometry; the reading is the analyzer's).

OCR reads the analysis image (``analysis.max_side``, 960 px by default), where captions of 20 px and
more stay legible and cost a quarter of 1080p. Corner text of 16 px is 12 px there on a 720p
source and 8 px on a 1080p one: the text detector still finds the line, but recognition reads
"QQ群12345678" as "爱群84限". So a line whose box is under ``min_px`` analysis pixels tall, on a
frame whose source has at least :data:`MIN_GAIN` times the analysis image's resolution, is cut
from the source frame with a margin and read again (a few small crops: no cost for frames without
small text); the new reading replaces the old one when it finds text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamwatch.analysis.model import Detection

MIN_GAIN = 1.25  # source pixels per analysis pixel below which a second reading gains nothing
MAX_LINES = 8  # lines read again per input at most (the smallest first)

PixelBox = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True, slots=True)
class Line:
    """A detected line to read again: its index in the input's detections and where to cut the source."""

    index: int
    box: PixelBox  # in source pixels


def small_lines(detections: Sequence[Detection], offset: tuple[int, int], gain: float, min_px: int, source: tuple[int, int]) -> list[Line]:
    """The lines of one OCR input (boxes in its pixels, the input at ``offset`` of the analysis image)
    that are under ``min_px`` tall, with their boxes in the source picture of ``source`` (width, height)
    pixels, ``gain`` source pixels per analysis pixel. Empty when ``gain`` < MIN_GAIN."""
    if gain < MIN_GAIN or min_px <= 0:
        return []
    sw, sh = source
    ox, oy = offset
    small = sorted(
        (d.bbox[3] - d.bbox[1], i)
        for i, d in enumerate(detections)
        if d.source == "ocr" and d.bbox is not None and d.bbox[3] - d.bbox[1] < min_px
    )
    out = []
    for _h, i in small[:MAX_LINES]:
        x1, y1, x2, y2 = detections[i].bbox or (0, 0, 0, 0)
        h = (y2 - y1) * gain
        mx, my = 4 + h * 0.5, 4 + h * 0.3  # margin: the detector's box hugs the strokes
        box = (
            max(int((x1 + ox) * gain - mx), 0),
            max(int((y1 + oy) * gain - my), 0),
            min(int((x2 + ox) * gain + mx) + 1, sw),
            min(int((y2 + oy) * gain + my) + 1, sh),
        )
        if box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
            out.append(Line(i, box))
    return out


def merged(
    detections: Sequence[Detection], lines: Sequence[Line], readings: Sequence[Sequence[Detection]], offset: tuple[int, int], gain: float
) -> tuple[Detection, ...]:
    """``detections`` with each re-read line replaced by what its source crop gave (boxes moved back to
    the input's pixels); a line whose crop gave no text keeps its first reading."""
    ox, oy = offset
    replaced: dict[int, list[Detection]] = {}
    for line, found in zip(lines, readings, strict=True):
        texts = [d for d in found if d.text and d.bbox is not None]
        if not texts:
            continue
        bx, by = line.box[0], line.box[1]
        replaced[line.index] = [
            Detection(
                d.source,
                d.label,
                d.confidence,
                tuple(int(v) for v in ((x1 + bx) / gain - ox, (y1 + by) / gain - oy, (x2 + bx) / gain - ox, (y2 + by) / gain - oy)),  # type: ignore[arg-type]
                d.text,
            )
            for d in texts
            for x1, y1, x2, y2 in [d.bbox or (0, 0, 0, 0)]
        ]
    out: list[Detection] = []
    for i, d in enumerate(detections):
        out.extend(replaced.get(i, [d]))
    return tuple(out)
