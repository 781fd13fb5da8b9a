"""``streamwatch eval DATASET --models a,b``: each model's compliance answers over labelled frames, scored
per question (:mod:`streamwatch.vlm.evaluate`). Kept apart so cli.py stays small."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamwatch.errors import ConfigError

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
