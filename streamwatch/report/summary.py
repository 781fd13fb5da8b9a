"""The post-ready summary (图文摘要) of a show: which frames, which tags, and a template post (pure).

Inputs come from the store: the frames it kept (thumbnails with an encoder embedding, or with the
change signature when there is no encoder: :data:`~streamwatch.sampling.regions.SIGNATURE_INDEX`),
and the show's events. A frame is eligible unless it raised an alert or lies in an alert's period
(content alerts: ``ALERT_BEFORE_S`` before to ``ALERT_AFTER_S`` after; black / frozen / outage: the
whole period) — the post must never show what a moderator flagged. Among the eligible frames the
picks are spread by farthest-point selection on the embeddings (diverse scenes), ties broken by
time. The post's text comes from the ``summary`` VLM role (:mod:`streamwatch.vlm.service`) or, when
no model serves, :func:`template_post`; either is checked against the policy's word lists.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from streamwatch.events.model import AlertEvent, Event, ReplyEvent, SceneEvent
from streamwatch.events.store import IndexedFrame
from streamwatch.report.build import Period, build_report, hms
from streamwatch.vlm.prompts import parse_summary

ALERT_BEFORE_S = 2.0
ALERT_AFTER_S = 3.0
MIN_DISTANCE = 0.1  # cosine distance below which a candidate repeats a picked frame (same shot, a caption more)
SAME_SCENE = 0.9  # cosine: a frame this close to an alert's evidence frame shows the same scene


@dataclass(frozen=True, slots=True)
class Post:
    """A short post: title, a few sentences, hashtags (without the #)."""

    title: str
    body: str
    hashtags: tuple[str, ...]
    model: str = "local"

    def text(self) -> str:
        return f"{self.title}\n{self.body}\n" + " ".join(f"#{t}#" for t in self.hashtags)


@dataclass(frozen=True, slots=True)
class SummaryInputs:
    stream: str
    duration_s: float
    frames: tuple[IndexedFrame, ...]  # eligible frames (alert periods already removed)
    excluded: int  # frames left out for lying in an alert period
    tags: tuple[tuple[str, int], ...]  # most frequent scene tags and labels, with counts
    alerts: int
    periods: tuple[Period, ...]
    replies: tuple[ReplyEvent, ...] = field(default=())


def blocked_spans(events: list[Event], period_list: list[Period], end: float) -> list[tuple[float, float]]:
    """Stream-time spans no summary frame may come from: around each alert, and every health period."""
    spans = [(a.offset - ALERT_BEFORE_S, a.offset + ALERT_AFTER_S) for a in events if isinstance(a, AlertEvent)]
    spans += [(p.start - 0.5, (p.end if p.end is not None else end) - 0.01) for p in period_list]
    return spans


def inputs_from(
    stream: str, events: list[Event], frames: list[IndexedFrame], *, top: int = 8, avoid: list[np.ndarray] | None = None
) -> SummaryInputs:
    """What the summary is built from: eligible frames, tag counts, the timeline's counts. ``avoid``: vectors
    (as the frames' embeddings) of the alerts' evidence frames; frames of the same scene are left out too."""
    period_list = list(build_report(stream, events).periods)
    end = max([e.offset for e in events] + [f.offset for f in frames] + [0.0])
    spans = blocked_spans(events, period_list, end)

    def same_scene(f: IndexedFrame) -> bool:
        return any(v.shape == f.embedding.shape and float(v @ f.embedding) >= SAME_SCENE for v in avoid or ())

    eligible = tuple(f for f in frames if f.thumb and not any(a <= f.offset <= b for a, b in spans) and not same_scene(f))
    counts: Counter[str] = Counter()
    for e in events:
        if isinstance(e, SceneEvent):
            counts.update(t for t in e.tags if "=" not in t or not t.endswith(("=no", "=false", "=none")))
    for f in eligible:
        counts.update(f.tags)
    return SummaryInputs(
        stream,
        end,
        eligible,
        len(frames) - len(eligible),
        tuple(counts.most_common(top)),
        sum(isinstance(e, AlertEvent) for e in events),
        tuple(period_list),
        tuple(e for e in events if isinstance(e, ReplyEvent)),
    )


def pick_frames(frames: tuple[IndexedFrame, ...] | list[IndexedFrame], k: int = 6) -> list[IndexedFrame]:
    """Up to ``k`` diverse frames: farthest-point selection on the embeddings (cosine), starting from the
    frame nearest the mean; returned in stream order."""
    pool = [f for f in frames if f.embedding.size]
    if not pool or k <= 0:
        return []
    dims = Counter(f.embedding.shape for f in pool).most_common(1)[0][0]
    pool = [f for f in pool if f.embedding.shape == dims]
    emb = np.stack([f.embedding for f in pool]).astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb / np.maximum(norms, 1e-6)
    first = int(np.argmax(emb @ emb.mean(0)))
    chosen = [first]
    nearest = 1.0 - emb @ emb[first]  # cosine distance to the closest chosen frame
    while len(chosen) < min(k, len(pool)):
        i = int(np.argmax(nearest))
        if nearest[i] < MIN_DISTANCE:  # everything left looks like something already chosen
            break
        chosen.append(i)
        nearest = np.minimum(nearest, 1.0 - emb @ emb[i])
    return sorted((pool[i] for i in chosen), key=lambda f: f.offset)


def template_post(inputs: SummaryInputs, picks: list[IndexedFrame], persona_name: str | None = None) -> Post:
    """A post built from the tags and the timeline alone (no model)."""
    minutes = max(1, round(inputs.duration_s / 60))
    scenes = [t.split("=", 1)[-1].replace("_", " ") for t, _ in inputs.tags[:3]]
    who = persona_name or "我们"
    title = f"{who}的直播回顾｜{minutes} 分钟精彩不断"
    lines = [f"今晚 {minutes} 分钟的直播圆满结束，感谢每一位来看的朋友！"]
    if scenes:
        lines.append(f"现场关键词：{'、'.join(scenes)}。")
    if picks:
        lines.append(f"精选 {len(picks)} 个瞬间：" + "、".join(hms(f.offset) for f in picks) + "。")
    if inputs.replies:
        lines.append(f"收到 {len(inputs.replies)} 张粉丝投图，每一张都认真回复啦。")
    lines.append("下次直播见！")
    tags = ("直播回顾", *(s.replace(" ", "") for s in scenes[:2]), "虚拟偶像")
    return Post(title, "".join(lines), tuple(dict.fromkeys(t for t in tags if t)))


def parse_post(text: str, model: str) -> Post | None:
    """A model's answer as a :class:`Post` (see :func:`~streamwatch.vlm.prompts.parse_summary`); None if unusable."""
    parts = parse_summary(text)
    return None if parts is None else Post(*parts, model=model)


def summary_json(
    inputs: SummaryInputs, post: Post, picks: list[IndexedFrame], files: dict[int, str], collage: str | None
) -> dict[str, object]:
    """The summary for posting tools: the post, the picked frames (offset, file, tags) and the collage."""
    return {
        "stream": inputs.stream,
        "duration_s": round(inputs.duration_s, 1),
        "post": {"title": post.title, "body": post.body, "hashtags": list(post.hashtags), "model": post.model, "text": post.text()},
        "frames": [{"offset": round(f.offset, 2), "time": hms(f.offset), "file": files.get(f.id), "tags": list(f.tags)} for f in picks],
        "tags": [{"tag": t, "count": n} for t, n in inputs.tags],
        "excluded_frames": inputs.excluded,
        "collage": collage,
        "replies": len(inputs.replies),
    }


def summary_markdown(post: Post, picks: list[IndexedFrame], files: dict[int, str], collage: str | None) -> str:
    lines = [f"# {post.title}", "", post.body, "", " ".join(f"#{t}#" for t in post.hashtags), ""]
    lines += [f"![{hms(f.offset)}]({files[f.id]})" for f in picks if f.id in files]
    if collage:
        lines += ["", "## 粉丝投图 / Fan art", "", f"![collage]({collage})"]
    lines += ["", f"<sub>text: {post.model}</sub>", ""]
    return "\n".join(lines)


def summary_html(post: Post, picks: list[IndexedFrame], sources: dict[int, str], collage: str | None = None) -> str:
    """An HTML fragment (the report's section, and the preview page's body); ``sources`` maps frame ids
    to image URLs (relative files, or data: URIs for a self-contained report)."""
    from html import escape

    out = [
        "<section id='post-summary'><style>#post-summary .cards{display:flex;flex-wrap:wrap;gap:8px}"
        "#post-summary figure{margin:0}#post-summary .thumb{width:320px;border-radius:4px}"
        "#post-summary .muted{color:#667}</style><h2>Post-ready summary (图文摘要)</h2>",
        f"<h3>{escape(post.title)}</h3><p>{escape(post.body)}</p>",
        "<p class='muted'>" + escape(" ".join(f"#{t}#" for t in post.hashtags)) + f" · text by {escape(post.model)}</p><div class='cards'>",
    ]
    for f in picks:
        if f.id in sources:
            out.append(f"<figure class='card'><img class='thumb' alt='{hms(f.offset)}' src='{escape(sources[f.id])}'>"
                       f"<figcaption>{hms(f.offset)}</figcaption></figure>")  # fmt: skip
    out.append("</div>")
    if collage:
        out.append(f"<h3>粉丝投图 / Fan art</h3><img alt='collage' style='max-width:100%' src='{escape(collage)}'>")
    out.append("</section>")
    return "\n".join(out)
