"""``streamwatch eval DATASET --models a,b``: each model's compliance answers over labelled frames, scored
per question (:mod:`streamwatch.vlm.evaluate`); ``streamwatch export-reviews STREAM``: the moderators'
decisions as such a dataset (:mod:`streamwatch.vlm.dataset`). Kept apart so cli.py stays small."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamwatch.errors import ConfigError, EventsError

if TYPE_CHECKING:
    import numpy as np

    from streamwatch.vlm.evaluate import Frame, ModelScore, Outcome
    from streamwatch.vlm.prompts import ComplianceQuestion
    from streamwatch.vlm.registry import Registry


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="score each model's compliance answers on labelled frames (precision, recall, latency, failures)")
    p.add_argument("dataset", type=Path, help="folder with the images and labels.json")
    p.add_argument("--models", required=True, help="registry ids, comma-separated (each is asked alone: no failover)")
    p.add_argument("-c", "--config", type=Path, help="TOML config file ([vlm] registry, questions)")
    p.add_argument("-o", "--output", type=Path, help="also write an HTML report with the misjudged frames")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(a: argparse.Namespace) -> int:
    from streamwatch.config import load_settings
    from streamwatch.vlm.evaluate import load_dataset, render_html, render_text
    from streamwatch.vlm.prompts import DEFAULT_QUESTIONS, ComplianceQuestion
    from streamwatch.vlm.registry import LOCAL, Capability, load_registry

    settings = load_settings(a.config)
    registry = load_registry(settings.vlm.registry, settings.vlm.roles)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    for mid in models:
        spec = registry.get(mid, "--models")
        if mid == LOCAL or not spec.serves(Capability.COMPLIANCE):
            raise ConfigError(f"--models: {mid!r} cannot answer compliance questions (the local cascade is not scored here)")
    questions = DEFAULT_QUESTIONS
    if settings.vlm.questions is not None:
        questions = tuple(ComplianceQuestion(q.id, q.question, q.kind, tuple(q.options)) for q in settings.vlm.questions)  # type: ignore[arg-type]
    frames = load_dataset(a.dataset)
    scores = asyncio.run(_run(registry, models, frames, questions))
    print(render_text(scores))
    if a.output is not None:
        thumbs = {f.image: f.image.read_bytes() for s in scores for o in s.misjudged for f in (o.frame,)}
        a.output.write_text(render_html(scores, thumbs), encoding="utf-8")
        print(f"\nwrote {a.output}")
    return 0


def _read(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


async def _run(registry: Registry, models: list[str], frames: list[Frame], questions: tuple[ComplianceQuestion, ...]) -> list[ModelScore]:
    from streamwatch.errors import VLMError
    from streamwatch.vlm.evaluate import Outcome, answers_of, score
    from streamwatch.vlm.local import ImageEvidence
    from streamwatch.vlm.registry import Capability
    from streamwatch.vlm.router import ModelRouter
    from streamwatch.vlm.service import VLMService

    images = [_read(f.image) for f in frames]
    out = []
    for mid in models:
        # the model alone: no failover, and a breaker that never opens (every frame is asked)
        router = ModelRouter(registry, breaker_failures=1 << 30)
        router.chains = {role: [mid] for role in Capability}
        service = VLMService(router, questions=questions)
        outcomes: list[Outcome] = []
        try:
            for frame, rgb in zip(frames, images, strict=True):
                t0 = time.perf_counter()
                try:
                    answer = await service.compliance(rgb, ImageEvidence(rgb.shape[1], rgb.shape[0]))
                except VLMError as e:
                    outcomes.append(Outcome(frame, None, time.perf_counter() - t0, str(e)[:300]))
                    continue
                got = answers_of(answer, questions) if answer is not None else None
                outcomes.append(Outcome(frame, got, time.perf_counter() - t0, "" if got is not None else "no answer"))
        finally:
            await router.close()
        out.append(score(mid, outcomes, questions))
    return out


def add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export-reviews", help="turn the moderators' confirm/dismiss decisions on a stream into an eval dataset")
    p.add_argument("stream", help="stream id")
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset folder to write (images + labels.json)")
    p.add_argument("--data", type=Path, help="data directory (default: data_dir from the config)")
    p.add_argument("-c", "--config", type=Path, help="TOML config file")
    p.set_defaults(func=_cmd_export_reviews)


def _cmd_export_reviews(a: argparse.Namespace) -> int:
    import json
    import shutil

    from streamwatch.config import load_settings
    from streamwatch.events.store import EventStore
    from streamwatch.vlm.dataset import reviewed_frames

    data = a.data or load_settings(a.config).data_dir
    if not (data / "events.sqlite3").is_file():
        raise EventsError(f"no event store in {data} (events.sqlite3 not found)")
    store = EventStore(data, retention_days=None, retention_mb=None)  # reading: prune nothing
    try:
        frames = reviewed_frames(store.events(a.stream))
        a.output.mkdir(parents=True, exist_ok=True)
        out = []
        for f in frames:
            src = store.frame_path(f.frame)
            if src is None or not src.is_file():
                continue  # pruned by retention
            name = f"{'-'.join(map(str, f.alerts))}{src.suffix}"
            shutil.copyfile(src, a.output / name)
            out.append(f.as_json(name))
    finally:
        store.close()
    (a.output / "labels.json").write_text(json.dumps({"stream": a.stream, "frames": out}, ensure_ascii=False, indent=1), encoding="utf-8")
    answered = sum(1 for f in out if f["answers"])
    print(f"wrote {len(out)} reviewed frames ({answered} with compliance answers) to {a.output}")
    return 0
