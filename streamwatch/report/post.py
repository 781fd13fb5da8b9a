"""``streamwatch summary``: the post-ready summary folder of one stream (the I/O edge of the summary).

Reads the store (frames kept during the show, events), picks the frames (:mod:`.summary`), asks the
``summary`` role for the post (the template when no model serves), checks it against the stream's
policy word lists (a failing answer is asked again once, then the next model, then the template),
builds the fan-art collage (:mod:`.collage`) and writes::

    OUT/frames/01_00-03-12.jpg …   the picked frames
    OUT/collage.jpg                the replied audience images (when there are any)
    OUT/slideshow.mp4              (with slideshow=True)
    OUT/summary.json               for posting tools
    OUT/summary.md, summary.html   previews
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamwatch.analysis.policy import Policy
from streamwatch.analysis.rules import text_is_clean
from streamwatch.errors import EventsError
from streamwatch.events.model import AlertEvent, Event, ReplyEvent
from streamwatch.events.storage import storage_error
from streamwatch.events.store import EventStore, IndexedFrame
from streamwatch.report.build import hms
from streamwatch.report.collage import collage, slideshow
from streamwatch.report.summary import (
    Post,
    SummaryInputs,
    inputs_from,
    pick_frames,
    summary_html,
    summary_json,
    summary_markdown,
    template_post,
)
from streamwatch.sampling.regions import SIGNATURE_INDEX, signature_of, signature_vector
from streamwatch.vlm.persona import Persona
from streamwatch.vlm.service import VLMService

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SummaryResult:
    out: Path
    post: Post
    frames: tuple[Path, ...]
    collage: Path | None
    replied: int  # audience images in the collage
    excluded: int = 0  # frames left out for lying in or near an alert or a health period


def _read_rgb(store: EventStore, rel: str | None) -> np.ndarray | None:
    path = store.frame_path(rel) if rel else None
    img = cv2.imread(str(path)) if path is not None else None
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _facts(stream: str, duration_s: float, tags: tuple[tuple[str, int], ...], picks: list[IndexedFrame], replies: int) -> str:
    lines = [f"Stream: {stream}. Length: {hms(duration_s)}."]
    if tags:
        lines.append("Most frequent scene tags: " + ", ".join(f"{t} ({n})" for t, n in tags) + ".")
    lines.append("Moments shown: " + ", ".join(f"{hms(f.offset)} [{' '.join(f.tags) or '-'}]" for f in picks) + ".")
    if replies:
        lines.append(f"Fans sent {replies} images that the idol answered live.")
    return "\n".join(lines)


def choose_frames(
    store: EventStore, stream: str, events: list[Event], k: int
) -> tuple[SummaryInputs, list[IndexedFrame], dict[int, np.ndarray]]:
    """The summary's inputs, its picked frames and their pictures (RGB) from the store (blocking)."""
    indexed = store.frames(stream=stream)
    models = {f.model for f in indexed}
    # encoder embeddings when there are any (they see content), else the change signature
    best = max(models, key=lambda m: (m != SIGNATURE_INDEX, sum(f.model == m for f in indexed)), default=None)
    avoid = []
    if best == SIGNATURE_INDEX:  # the alerts' evidence frames, as change signatures
        for e in events:
            img = _read_rgb(store, e.evidence.frame) if isinstance(e, AlertEvent) else None
            if img is not None:
                avoid.append(signature_vector(signature_of(img)))
    inputs = inputs_from(stream, events, [f for f in indexed if f.model == best], avoid=avoid)
    picks = pick_frames(inputs.frames, k)
    images = {f.id: img for f in picks if (img := _read_rgb(store, f.thumb)) is not None}
    picks = [f for f in picks if f.id in images]
    return inputs, picks, images


def report_section(store: EventStore, stream: str, events: list[Event], k: int = 6) -> str:
    """The report's "post-ready summary" section: the picked frames (embedded) and the template post."""
    import base64

    inputs, picks, _images = choose_frames(store, stream, events, k)
    if not picks:
        return ""
    sources = {}
    for f in picks:
        path = store.frame_path(f.thumb) if f.thumb else None
        if path is not None:
            sources[f.id] = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    hint = f"<p class='muted'>streamwatch summary {stream} writes it as a folder, with the text by the summary model.</p>"
    return summary_html(template_post(inputs, picks), picks, sources).replace("</section>", hint + "</section>")


async def write_summary(
    store: EventStore,
    stream: str,
    out: Path,
    *,
    service: VLMService | None,
    policy: Policy,
    persona: Persona | None = None,
    frames: int = 6,
    with_slideshow: bool = False,
) -> SummaryResult:
    """Build the summary folder for ``stream``; raises EventsError when the store has nothing of it."""
    events = store.events(stream)
    if not events:
        known = ", ".join(store.streams()) or "none"
        raise EventsError(f"no events for stream {stream!r} in {store.data_dir} (streams there: {known})")
    inputs, picks, images = choose_frames(store, stream, events, frames)
    fallback = template_post(inputs, picks, persona.name if persona else None)

    async def template() -> tuple[str, str, tuple[str, ...]]:
        return fallback.title, fallback.body, fallback.hashtags

    post = fallback
    if service is not None:
        (title, body, tags), model = await service.summary(
            [images[f.id] for f in picks],
            _facts(stream, inputs.duration_s, inputs.tags, picks, len(inputs.replies)),
            persona=persona,
            accept=lambda text: text_is_clean(policy, stream, text),
            template=template,
        )
        post = Post(title, body, tags, model)
    if not text_is_clean(policy, stream, post.text()):  # the template reads tags: check it as well
        logger.warning("summary text for %s failed the word lists; using the plain template", stream)
        post = template_post(inputs, picks, None)

    try:
        files, collage_rel, replied = _write_files(out, store, inputs, post, picks, images, with_slideshow)
    except OSError as e:
        raise storage_error(e, "files", f"write the summary in {out}") or EventsError(f"cannot write the summary in {out}: {e}") from e
    frames_out = tuple(out / files[f.id] for f in picks)
    return SummaryResult(out, post, frames_out, out / collage_rel if collage_rel else None, len(replied), inputs.excluded)


def _write_files(
    out: Path,
    store: EventStore,
    inputs: SummaryInputs,
    post: Post,
    picks: list[IndexedFrame],
    images: dict[int, np.ndarray],
    with_slideshow: bool,
) -> tuple[dict[int, str], str | None, list[tuple[np.ndarray, str]]]:
    """Blocking: the summary's pictures and texts in ``out``; (frame files by id, collage file, replied images)."""
    (out / "frames").mkdir(parents=True, exist_ok=True)
    for stale in [*(out / "frames").glob("*.jpg"), out / "collage.jpg", out / "slideshow.mp4"]:  # a summary written again
        stale.unlink(missing_ok=True)
    files: dict[int, str] = {}
    for n, f in enumerate(picks, 1):
        rel = f"frames/{n:02d}_{hms(f.offset).replace(':', '-')}.jpg"
        _jpeg(out / rel, images[f.id])
        files[f.id] = rel
    replied = [
        (img, e.user or e.submitter) for e in inputs.replies if isinstance(e, ReplyEvent) and (img := _read_rgb(store, e.image)) is not None
    ]
    collage_rel = None
    if replied:
        collage_rel = "collage.jpg"
        _jpeg(out / collage_rel, collage(replied))
        if with_slideshow:
            slideshow(out / "slideshow.mp4", [img for img, _ in replied])
    (out / "summary.json").write_text(json.dumps(summary_json(inputs, post, picks, files, collage_rel), ensure_ascii=False, indent=1))
    (out / "summary.md").write_text(summary_markdown(post, picks, files, collage_rel), encoding="utf-8")
    page = "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><title>" + post.title + "</title></head><body>"
    (out / "summary.html").write_text(page + summary_html(post, picks, files, collage_rel) + "</body></html>", encoding="utf-8")
    return files, collage_rel, replied


def _jpeg(path: Path, rgb: np.ndarray) -> None:
    """Write a JPEG (an OSError when the disk is full: cv2.imwrite would only return False)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise EventsError(f"cannot encode {path.name}")
    path.write_bytes(buf.tobytes())
