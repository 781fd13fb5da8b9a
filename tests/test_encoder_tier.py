"""The encoder tier: zero-shot labels (prompts + prototypes), the semantic cache in the cascade, frame
indexing and search (store, CLI, GET /search), and policy `label` rules. Real ONNX sessions on a tiny
random CLIP; where a right answer must be known, prototypes and queries are built from the same photos
(a random encoder does not know what a cat is, but it maps the same picture to the same place)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

import tiny_encoder
from evserver import TOKENS, ServerThread

from streamwatch.analysis.cache import EmbeddingCache
from streamwatch.analysis.cascade import Cascade
from streamwatch.analysis.encoder import Encoder, EncoderTier, index_frame, load_labels
from streamwatch.analysis.encoder_export import export_encoder, sample_images
from streamwatch.analysis.labels import Label, LabelIndex
from streamwatch.analysis.model import FrameAnalysis
from streamwatch.analysis.policy import load_policy
from streamwatch.analysis.rules import RuleEngine
from streamwatch.analysis.search import FrameSearch, hit_json
from streamwatch.cli import main
from streamwatch.errors import ModelLoadError
from streamwatch.events.store import EventStore
from streamwatch.sampling.phash import PHash

MODELS = Path(__file__).resolve().parents[1] / "models"
NAMES = ["astronaut", "coffee", "chelsea", "rocket", "camera", "horse"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tier")
    export_encoder(str(tiny_encoder.build(root / "ckpt", "clip")), root / "enc", name="tiny-clip", exporter="legacy")
    return root / "enc"


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return dict(zip(NAMES, sample_images(6), strict=True))


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


def test_labels_fire_on_prompt_or_prototype_and_say_which() -> None:
    a, b, c = unit([1, 0, 0]), unit([0, 1, 0]), unit([0, 0, 1])
    idx = LabelIndex(
        [Label("stage", a, 0.8), Label("hanfu", None, 0.0, np.stack([b]), 0.9), Label("both", a, 0.999, np.stack([c]), 0.9)],
        dim=3,
    )
    got = idx.detect(np.stack([unit([1, 0.1, 0]), b, c, unit([1, 1, 1])]))
    assert [(d.label, d.text) for d in got[0]] == [("stage", "text")]
    assert [(d.label, d.text) for d in got[1]] == [("hanfu", "prototype")]
    assert [(d.label, d.text) for d in got[2]] == [("both", "prototype")]
    assert got[3] == ()  # nothing clears its threshold


def test_embedding_cache_hits_near_duplicates_until_they_expire() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache(3, threshold=0.95, ttl_s=10, max_entries=2)
    cache.put(unit([1, 0, 0]), "a", now=0)
    assert cache.get(unit([1, 0.1, 0]), now=5) == ("a", pytest.approx(0.995, abs=1e-3))
    assert cache.get(unit([0, 1, 0]), now=5) is None
    assert cache.get(unit([1, 0, 0]), now=11) is None  # expired
    cache.put(unit([0, 1, 0]), "b", now=12)
    cache.put(unit([0, 0, 1]), "c", now=12)  # ring of 2: "a" is gone
    assert cache.get(unit([1, 0, 0]), now=12) is None and cache.get(unit([0, 0, 1]), now=12)[0] == "c"  # type: ignore[index]


def test_prototype_labels_from_a_labels_file(encoder_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    cv2.imwrite(str(tmp_path / "cat" / "chelsea.png"), cv2.cvtColor(photos["chelsea"], cv2.COLOR_RGB2BGR))
    (tmp_path / "labels.toml").write_text(
        '[[label]]\nid = "cat"\nprompts = ["a photo of a cat"]\nthreshold = 0.9999\nprototypes = "cat"\nprototype_threshold = 0.999\n'
        '[[label]]\nid = "stage"\nprompts = ["a concert stage"]\nthreshold = 1.0\n'
    )
    enc = Encoder(encoder_dir, device="cpu")
    tier = EncoderTier(enc, load_labels(tmp_path / "labels.toml", enc))
    embeds, labels = tier.encode([photos["chelsea"], photos["rocket"]])
    assert [(d.label, d.text) for d in labels[0]] == [("cat", "prototype")] and labels[0][0].confidence > 0.999
    assert labels[1] == ()
    assert embeds.shape == (2, enc.dim)
    (tmp_path / "bad.toml").write_text('[[label]]\nid = "x"\nprototypes = "nowhere"\n')
    with pytest.raises(ModelLoadError, match="no images in"):
        load_labels(tmp_path / "bad.toml", enc)
    (tmp_path / "bad.toml").write_text('[[label]]\nid = "x"\nthreshold = 7\n')
    with pytest.raises(ModelLoadError, match=r"threshold \(line 3\)"):
        load_labels(tmp_path / "bad.toml", enc)
    load_labels(MODELS / "labels.toml", enc)  # the shipped example loads


def test_the_cascade_embeds_labels_and_reuses_analysis_on_a_semantic_hit(encoder_dir: Path, photos: dict[str, np.ndarray]) -> None:
    enc = Encoder(encoder_dir, device="cpu")
    protos = LabelIndex([Label("cat", None, 1.0, enc.embed_images([photos["chelsea"]]), 0.999)], enc.dim)
    pool = ThreadPoolExecutor(2)
    from streamwatch.analysis.base import create
    from streamwatch.analysis.detectors import AnalyzerSettings

    async def go() -> tuple[list[FrameAnalysis], Cascade]:
        cascade = Cascade([create("qr", AnalyzerSettings(device="cpu"))], pool, encoder=EncoderTier(enc, protos), semantic_threshold=0.9999)
        cat, rocket = photos["chelsea"], photos["rocket"]
        out = await asyncio.gather(  # two streams at once share one encoder batch
            cascade.analyze("s1", cat, PHash(1), offset=0, at=0, received_at=0),
            cascade.analyze("s2", rocket, PHash(2), offset=0, at=0, received_at=0),
        )
        # the same picture under another pHash (as a re-framed shot looks to the pHash): the
        # embedding matches, so the analysis is reused; an unrelated one is analysed afresh
        out.append(await cascade.analyze("s1", cat.copy(), PHash(0xFFFF_FFFF_0000_0000), offset=1, at=1, received_at=1))
        out.append(await cascade.analyze("s1", photos["astronaut"], PHash(0x0F0F_0F0F_0F0F_0F0F), offset=2, at=2, received_at=2))
        await cascade.close()
        return list(out), cascade

    (cat, rocket, again, other), cascade = asyncio.run(go())
    pool.shutdown()
    assert [d.label for d in cat.by("encoder")] == ["cat"] and rocket.by("encoder") == ()
    assert cat.embedding is not None and np.isclose(np.linalg.norm(cat.embedding), 1.0, atol=1e-5)
    assert again.cached and again.detections == cat.detections and cascade.semantic_hits == 1
    assert not other.cached and cascade.frames == 3


def test_frames_are_indexed_and_searchable(encoder_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path) -> None:
    enc = Encoder(encoder_dir, device="cpu")
    store = EventStore(tmp_path / "d")
    embeds = enc.embed_images(list(photos.values()))
    for i, img in enumerate(photos.values()):
        stream = "show" if i % 2 == 0 else "other"
        fa = FrameAnalysis(stream, float(i * 10), 1000.0 + i, 1000.0 + i, (), img.shape[1], img.shape[0], embedding=embeds[i])
        index_frame(store, fa, img, "tiny-clip")
    search = FrameSearch(enc, store)
    assert search.index.refresh(store) == 6 and search.index.refresh(store) == 0  # incremental
    # search by example: each photo's own frame comes first
    for i, name in enumerate(photos):
        hits = search.index.query(embeds[i], limit=3)
        assert hits[0].frame.offset == i * 10 and hits[0].score > 0.999, name
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    only = search.index.query(embeds[1], stream="show", limit=10)
    assert {h.frame.stream for h in only} == {"show"} and len(only) == 3
    text_hits = search.search("a cat on a sofa", limit=4)
    assert len(text_hits) == 4 and all(h.frame.thumb and store.frame_path(h.frame.thumb) for h in text_hits)
    j = hit_json(text_hits[0])
    assert j["thumb"].startswith("/frames/") and j["offset_hms"].count(":") == 2  # type: ignore[union-attr]
    store.close()
    # the CLI
    assert main(["search", "a rocket", "--data", str(tmp_path / "d"), "--encoder", str(encoder_dir), "--limit", "2", "--json"]) == 0
    assert main(["search", "x", "--data", str(tmp_path / "d")]) == 1  # no encoder given


def test_search_over_http(encoder_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path) -> None:
    enc = Encoder(encoder_dir, device="cpu")
    with ServerThread(tmp_path / "d") as s:
        for i, img in enumerate(photos.values()):
            fa = FrameAnalysis("s1", float(i), 1000.0 + i, 1000.0 + i, (), 1, 1, embedding=enc.embed_images([img])[0])
            index_frame(s.store, fa, img, "tiny-clip")
        fs = FrameSearch(enc, s.store)
        s.server._http.search = lambda q, st, n: [hit_json(h) for h in fs.search(q, stream=st, limit=n)]
        base = f"http://127.0.0.1:{s.port}"

        def get(path: str, token: str | None = TOKENS["moderator"]) -> tuple[int, dict]:  # type: ignore[type-arg]
            req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"{}") if e.headers.get("Content-Type", "").startswith("application/json") else {}

        status, body = get("/search?q=%E6%B1%89%E6%9C%8D&limit=3")
        assert status == 200 and body["query"] == "汉服" and len(body["hits"]) == 3
        assert get("/search?q=x", None)[0] == 401
        assert get("/search?q=x", TOKENS["overlay"])[0] == 403
        assert get("/search?limit=3")[0] == 400 and get("/search?q=x&limit=0")[0] == 400
        thumb = body["hits"][0]["thumb"]
        req = urllib.request.Request(base + thumb, headers={"Authorization": f"Bearer {TOKENS['moderator']}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.read()[:3] == b"\xff\xd8\xff"


def test_policy_label_rules(tmp_path: Path) -> None:
    import shutil

    from streamwatch.analysis.model import Detection

    shutil.copytree(MODELS, tmp_path / "m")
    p = tmp_path / "m" / "policy.toml"
    p.write_text(
        p.read_text()
        + '\n[[rule]]\nid = "outdoor_scene"\nseverity = "low"\nmessage = "Outdoor scene ({confidence:.2f})"\n'
        + 'cooldown_s = 60\n[rule.when]\nlabel = "outdoor"\nmin_score = 0.3\n'
    )
    engine = RuleEngine(load_policy(p))
    weak = FrameAnalysis("s", 1.0, 0, 0, (Detection("encoder", "outdoor", 0.28, text="text"),), 10, 10)
    strong = FrameAnalysis("s", 2.0, 0, 0, (Detection("encoder", "outdoor", 0.31, text="text"),), 10, 10)
    assert engine.evaluate(weak) == []
    drafts = engine.evaluate(strong)
    assert [(d.rule, d.evidence_kind, d.message) for d in drafts] == [("outdoor_scene", "encoder", "Outdoor scene (0.31)")]
    p.write_text(p.read_text().replace('label = "outdoor"', 'label = "outdoor"\nqr = "any"'))
    with pytest.raises(Exception, match="exactly one of detector, label"):
        load_policy(p)


def test_the_daemon_indexes_kept_frames_for_search(encoder_dir: Path, short_clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from streamwatch.app import Daemon
    from streamwatch.config import load_settings

    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "d",
            "streams": [{"id": "s", "source": str(short_clip.path)}],
            "analysis": {"analyzers": ["qr"], "encoder": {"path": encoder_dir}},
        },
    )
    daemon = Daemon(settings, serve=False)
    asyncio.run(daemon.run())
    store = EventStore(tmp_path / "d")
    frames = store.frames(stream="s")
    assert len(frames) == daemon.cascade.frames >= 2  # every analysed (not cached) frame is indexed
    assert all(f.model == "tiny-clip" and f.thumb and store.frame_path(f.thumb) for f in frames)
    assert daemon.search is not None
    daemon.search.store = store
    hits = daemon._search("a concert stage", "s", 2)
    assert len(hits) == 2 and hits[0]["stream"] == "s"
    assert daemon.metrics.registry.get_sample_value("streamwatch_stage_latency_seconds_count", {"stage": "analyzer_encoder"})
    cpu = {
        st: daemon.metrics.registry.get_sample_value("streamwatch_stage_cpu_seconds_total", {"stream": "s", "stage": st})
        for st in ("encoder", "qr", "nudity")
    }
    assert (cpu["encoder"] or 0) > 0 and (cpu["qr"] or 0) > 0 and cpu["nudity"] is None  # the encoder's CPU is counted to the stream
