"""``streamwatch eval DATASET --models a,b``: the local cascade's rules and each model's compliance answers
over labelled frames, scored per rule and per question (:mod:`streamwatch.vlm.evaluate`);
``streamwatch export-reviews STREAM``: the moderators'
decisions as such a dataset (:mod:`streamwatch.vlm.dataset`). Kept apart so cli.py stays small."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamwatch.errors import ConfigError, EventsError, VLMTruncated

if TYPE_CHECKING:
    import numpy as np

    from streamwatch.analysis.rules import RuleEngine
    from streamwatch.config import Settings
    from streamwatch.vlm.backend import VLMBackend, VLMRequest, VLMResult
    from streamwatch.vlm.evaluate import Frame, ModelScore, Outcome
    from streamwatch.vlm.prompts import ComplianceQuestion
    from streamwatch.vlm.registry import ModelSpec, Registry


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval", help="score the local cascade's rules and each model's answers on labelled frames (precision, recall, latency)"
    )
    p.add_argument("dataset", type=Path, help="folder with the images and labels.json")
    p.add_argument("--models", default="", help="registry ids, comma-separated (each is asked alone: no failover)")
    p.add_argument("--no-cascade", action="store_true", help="do not run the local analyzers (score the models only)")
    p.add_argument("-c", "--config", type=Path, help="TOML config file ([vlm] registry, questions)")
    p.add_argument("-o", "--output", type=Path, help="also write an HTML report with the misjudged frames")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(a: argparse.Namespace) -> int:
    from streamwatch.config import load_settings
    from streamwatch.vlm.evaluate import load_dataset, render_html, render_text
    from streamwatch.vlm.prompts import DEFAULT_QUESTIONS, ComplianceQuestion
    from streamwatch.vlm.registry import LOCAL, Capability, load_registry

    settings = load_settings(a.config)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    if not models and a.no_cascade:
        raise ConfigError("nothing to score: name --models, or leave out --no-cascade")
    registry = load_registry(settings.vlm.registry, settings.vlm.roles)
    for mid in models:
        spec = registry.get(mid, "--models")
        if mid == LOCAL or not spec.serves(Capability.COMPLIANCE):
            raise ConfigError(f"--models: {mid!r} cannot answer compliance questions (the local cascade is scored without --models)")
    questions = DEFAULT_QUESTIONS
    if settings.vlm.questions is not None:
        questions = tuple(ComplianceQuestion(q.id, q.question, q.kind, tuple(q.options)) for q in settings.vlm.questions)  # type: ignore[arg-type]
    frames = load_dataset(a.dataset)
    engine = _engine(settings)
    scores = [] if a.no_cascade else [_cascade(settings, engine, frames)]
    scores += asyncio.run(_run(registry, models, frames, questions, engine))
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


def _engine(settings: Settings) -> RuleEngine:
    from streamwatch.analysis.policy import load_policy
    from streamwatch.analysis.rules import RuleEngine

    return RuleEngine(load_policy(settings.analysis.policy), settings.ui.language)


def _cascade(settings: Settings, engine: RuleEngine, frames: list[Frame]) -> ModelScore:
    """The local analyzers on each frame (as the daemon runs them: the analysis image at ``analysis.max_side``,
    QR at the source resolution) and the policy's frame rules they raise."""
    import cv2

    from streamwatch.analysis.base import create
    from streamwatch.analysis.detectors import AnalyzerSettings
    from streamwatch.errors import AnalysisError
    from streamwatch.vlm.evaluate import Outcome, score
    from streamwatch.vlm.evaluate_rules import fired_rules

    analyzers = [create(name, AnalyzerSettings(device=settings.analysis.device)) for name in settings.analysis.analyzers]
    outcomes = []
    for i, frame in enumerate(frames):
        src = _read(frame.image)
        t0 = time.perf_counter()
        scale = settings.analysis.max_side / max(src.shape[:2])
        img = cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else src
        try:
            dets = [d for a in analyzers for d in a.analyze([src if getattr(a, "source_resolution", False) else img])[0]]
        except AnalysisError as e:
            outcomes.append(Outcome(frame, None, time.perf_counter() - t0, str(e)[:300]))
            continue
        fired = fired_rules(engine, dets, img.shape[1], img.shape[0], f"eval-cascade-{i}")
        outcomes.append(Outcome(frame, {}, time.perf_counter() - t0, rules=fired))
    return score("local cascade", outcomes, ())


async def _run(
    registry: Registry, models: list[str], frames: list[Frame], questions: tuple[ComplianceQuestion, ...], engine: RuleEngine
) -> list[ModelScore]:
    from streamwatch.errors import VLMError
    from streamwatch.vlm.evaluate import Outcome, answers_of, score
    from streamwatch.vlm.evaluate_rules import fired_rules
    from streamwatch.vlm.local import ImageEvidence
    from streamwatch.vlm.registry import Capability
    from streamwatch.vlm.router import ModelRouter
    from streamwatch.vlm.service import VLMService

    images = [_read(f.image) for f in frames]
    out = []
    for mid in models:
        # the model alone: no failover, and a breaker that never opens (every frame is asked)
        usage = _Usage()
        router = ModelRouter(registry, breaker_failures=1 << 30, factory=usage.factory)
        router.chains = {role: [mid] for role in Capability}
        service = VLMService(router, questions=questions)
        outcomes: list[Outcome] = []
        try:
            for i, (frame, rgb) in enumerate(zip(frames, images, strict=True)):
                t0, usage.tokens = time.perf_counter(), None
                try:
                    answer = await service.compliance(rgb, ImageEvidence(rgb.shape[1], rgb.shape[0]))
                except VLMError as e:
                    outcomes.append(Outcome(frame, None, time.perf_counter() - t0, str(e)[:300], tokens=usage.tokens))
                    continue
                seconds = time.perf_counter() - t0
                if answer is None:
                    outcomes.append(Outcome(frame, None, seconds, "no answer", tokens=usage.tokens))
                    continue
                fired = fired_rules(engine, answer.detections(), rgb.shape[1], rgb.shape[0], f"eval-{mid}-{i}")
                outcomes.append(Outcome(frame, answers_of(answer, questions), seconds, rules=fired, tokens=usage.tokens))
        finally:
            await router.close()
        out.append(score(mid, outcomes, questions))
    return out


class _Usage:
    """Wraps the router's backends: the output tokens the server reported, summed over a frame's attempts."""

    def __init__(self) -> None:
        self.tokens: int | None = None

    def factory(self, spec: ModelSpec) -> VLMBackend:
        from streamwatch.vlm.router import create_backend

        return _Counting(create_backend(spec), self)


class _Counting:
    def __init__(self, inner: VLMBackend, usage: _Usage) -> None:
        self.inner, self.usage = inner, usage

    @property
    def model(self) -> str:
        return self.inner.model

    async def generate(self, request: VLMRequest) -> VLMResult:
        from streamwatch.vlm.backend import VLMResult

        try:
            result = await self.inner.generate(request)
        except VLMTruncated as e:  # a cut-off answer spent its tokens too
            if isinstance(e.result, VLMResult):
                self._count(e.result)
            raise
        self._count(result)
        return result

    def _count(self, result: VLMResult) -> None:
        if result.completion_tokens:
            self.usage.tokens = (self.usage.tokens or 0) + result.completion_tokens

    async def warm(self) -> None:
        await self.inner.warm()

    async def close(self) -> None:
        await self.inner.close()


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
