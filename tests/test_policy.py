"""Text normalisation and word lists, policy loading errors, rule evaluation with cooldowns, TTL cache."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from streamwatch.analysis.cache import PHashCache
from streamwatch.analysis.model import Detection, FrameAnalysis
from streamwatch.analysis.policy import load_policy
from streamwatch.analysis.rules import RuleEngine, qr_domain
from streamwatch.analysis.text import WordList, normalize, parse_t2s
from streamwatch.errors import PolicyError
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.sampling.phash import PHash

MODELS = Path(__file__).resolve().parent.parent / "models"
T2S = parse_t2s((MODELS / "wordlists/t2s.txt").read_text())


def wordlist(name: str) -> WordList:
    return WordList.parse(name, (MODELS / f"wordlists/{name}.txt").read_text(), T2S)


CONTACT_SPAM = [
    "加微信 abc123",
    "加 微 信",
    "加.微.信",
    "加　微　信",  # full-width spaces
    "ｖｘ：ｘｉａｏｍｅｉ８８",  # full-width letters
    "VX: xiaomei_88",
    "V信 xiaomei88",
    "威信 wang_xiao_8",
    "薇信号 1234567",
    "加威信",
    "+wx mei_2024",
    "QQ:12345678",
    "Q Q 1 2 3 4 5 6 7 8",
    "扣扣 一二三四五六七",
    "企鹅号 87654321",
    "掃碼加羣",  # traditional
    "加\u200b微\u200b信",  # zero-width spaces
]
INNOCENT = [
    "他很有威信",  # 威信 = prestige
    "微信支付",
    "今晚的舞台太棒了",
    "先进群体",
    "wx",
    "感谢大家的支持",
    "QQ音乐",
    "I love this song",
    "赌气",  # to sulk
    "unikemon",
]


@pytest.mark.parametrize("text", CONTACT_SPAM)
def test_contact_spam_evasions_are_caught(text: str) -> None:
    assert wordlist("contact").find(text), text


@pytest.mark.parametrize("text", INNOCENT)
def test_near_miss_innocent_text_is_not(text: str) -> None:
    for name in ("contact", "gambling", "brands"):
        assert not wordlist(name).find(text), (name, text)


@pytest.mark.parametrize(("text", "entry"), [("N I K E", "Nike"), ("n.i.k.e sale", "Nike"), ("Coca Cola", "Coca-Cola"),
                                             ("cocacola!", "Coca-Cola"), ("可 口 可 樂", "可口可乐"), ("百 家 乐", None)])  # fmt: skip
def test_brand_spellings(text: str, entry: str | None) -> None:
    found = [m.entry for m in wordlist("brands").find(text)]
    assert found == ([entry] if entry else [])
    if entry is None:
        assert wordlist("gambling").find(text)


def test_normal_forms() -> None:
    n = normalize("ＡＢＣ　１２３，N.I.K.E  ok", T2S)
    assert n.compact == "abc123nikeok"
    assert n.words == "abc 123 nike ok"
    assert normalize("扣扣一二三").digits == "扣扣123"


def test_policy_loads_and_broken_files_name_the_line(tmp_path: Path) -> None:
    policy = load_policy(MODELS / "policy.toml")
    assert {r.id for r in policy.rules} >= {"exposure", "contact_spam", "unauthorized_brand", "qr_code", "stream_black"}
    shutil.copytree(MODELS, tmp_path / "m")
    p = tmp_path / "m/policy.toml"
    text = p.read_text()
    high_line = text[: text.index('severity = "high"')].count("\n") + 1
    cases = [
        (text.replace('severity = "high"', 'severity = "urgent"', 1), f"line {high_line}"),
        (text.replace('qr = "offsite"', 'qr = "offsite"\nocr = "contact"'), "exactly one of"),
        (text.replace("cooldown_s = 60", "cooldown_s = -1", 1), "cooldown_s"),
        (text.replace('ocr = "gambling"', 'ocr = "casino"'), "'casino'"),
        (text.replace("on screen: {text}", "on screen: {txet}", 1), "placeholder"),
        (text + "\n[[rule]\n", "line"),
        (text.replace("[lists]", "[lists]\nbogus_key = 1\n[other]"), "other"),
    ]
    for broken, needle in cases:
        p.write_text(broken)
        with pytest.raises(PolicyError) as e:
            load_policy(p)
            pytest.fail(f"no error for the {needle!r} case")
        assert needle in str(e.value), (needle, str(e.value))
    p.write_text(text)
    (tmp_path / "m/wordlists/contact.txt").write_text("加微信\nre:(unclosed\n")
    with pytest.raises(PolicyError, match=r"contact.txt: line 2: bad regular expression"):
        load_policy(p)


def fa(offset: float, *dets: Detection, stream: str = "s1") -> FrameAnalysis:
    return FrameAnalysis(stream, offset, 1000.0 + offset, 1000.0 + offset, dets, 640, 360)


def ocr(text: str, conf: float = 0.9) -> Detection:
    return Detection("ocr", "text", conf, (0, 0, 100, 20), text)


def test_rules_alert_once_per_cooldown_and_again_when_evidence_returns() -> None:
    eng = RuleEngine(load_policy(MODELS / "policy.toml"))
    first = eng.evaluate(fa(10, ocr("加微信 abc123")))
    assert [(a.rule, a.evidence_kind) for a in first] == [("contact_spam", "ocr")]
    assert first[0].bbox == (0, 0, 100, 20) and "加微信" in first[0].message
    for t in range(11, 100, 5):  # persists (seen every 5 s < 60 s cooldown): no repeat
        assert eng.evaluate(fa(t, ocr("加微信 abc123"))) == []
    assert eng.evaluate(fa(120, ocr("今晚的舞台"))) == []
    again = eng.evaluate(fa(200, ocr("加微信 abc123")))  # gone > 60 s, back: a new alert
    assert [a.rule for a in again] == ["contact_spam"]
    assert [a.rule for a in eng.evaluate(fa(200, ocr("加微信 abc123"), stream="s2"))] == ["contact_spam"]  # per stream


def test_sponsor_does_not_alert_but_other_brand_does() -> None:
    eng = RuleEngine(load_policy(MODELS / "policy.toml"))
    assert eng.evaluate(fa(1, ocr("Red Bull 红牛 官方赞助"))) == []
    hits = eng.evaluate(fa(2, ocr("Red Bull x Monster Energy")))
    assert [(a.rule, a.key) for a in hits] == [("unauthorized_brand", "Monster Energy")]
    assert hits[0].escalate


def test_ocr_text_split_over_lines_and_low_confidence() -> None:
    eng = RuleEngine(load_policy(MODELS / "policy.toml"))
    assert [a.rule for a in eng.evaluate(fa(1, ocr("加"), ocr("微信")))] == ["contact_spam"]
    assert eng.evaluate(fa(100, ocr("加微信", conf=0.2))) == []


def test_qr_offsite_and_detector_rules() -> None:
    eng = RuleEngine(load_policy(MODELS / "policy.toml"))
    qr = lambda p: Detection("qr", "qr", 1.0, (5, 5, 60, 60), p)  # noqa: E731
    assert eng.evaluate(fa(1, qr("https://www.example-show.com/tickets"))) == []
    hits = eng.evaluate(fa(2, qr("https://evil.example/x"), qr("weixin://dl/abc")))
    assert [(a.rule, a.key) for a in hits] == [("qr_code", "https://evil.example/x"), ("qr_code", "weixin://dl/abc")]
    assert qr_domain("evil.example/path") == "evil.example" and qr_domain("just some text") is None
    nude = [Detection("nudity", "FEMALE_BREAST_EXPOSED", 0.8, (1, 1, 9, 9)), Detection("nudity", "FACE_FEMALE", 0.9, None),
            Detection("nudity", "BUTTOCKS_EXPOSED", 0.3, None)]  # fmt: skip
    hits = eng.evaluate(fa(3, *nude))
    assert [(a.rule, a.key, a.severity.value) for a in hits] == [("exposure", "FEMALE_BREAST_EXPOSED", "critical")]
    assert hits[0].message == "暴露：FEMALE_BREAST_EXPOSED（80%）"  # the desk's language: zh by default
    assert RuleEngine(eng.policy, "en").evaluate(fa(3, *nude))[0].message == "Exposure: FEMALE_BREAST_EXPOSED (80%)"


def test_health_rules_fire_once_when_the_condition_has_lasted() -> None:
    eng = RuleEngine(load_policy(MODELS / "policy.toml"))
    t0 = time.time()
    eng.on_health(HealthEvent(stream="s1", at=t0, offset=10, kind=HealthKind.BLACK, active=True))
    assert eng.tick("s1", t0 + 2) == []
    assert eng.tick("s1", t0 + 0.1, offset=12) == []  # stream time when given (a file analysed fast)
    hit = eng.tick("s1", t0 + 0.2, offset=13.5)
    assert [(off, a.rule, a.message) for off, a in hit] == [(10, "stream_black", "自 00:00:10 起黑屏（已至少 3 秒）")]
    assert eng.tick("s1", t0 + 10) == []  # once per period
    eng.on_health(HealthEvent(stream="s1", at=t0 + 12, offset=22, kind=HealthKind.BLACK, active=False, duration_s=12))
    eng.on_health(HealthEvent(stream="s1", at=t0 + 20, offset=30, kind=HealthKind.STATE, state=StreamState.STALLED))
    eng.on_health(HealthEvent(stream="s1", at=t0 + 21, offset=30, kind=HealthKind.STATE, state=StreamState.RECONNECTING))
    assert [(off, a.rule) for off, a in eng.tick("s1", t0 + 24)] == [(30, "stream_outage")]
    assert eng.tick("s2", t0 + 24) == []


def test_cache_hits_within_radius_and_ttl_and_stays_bounded() -> None:
    c: PHashCache[str] = PHashCache(radius=4, ttl_s=10, max_entries=3)
    h = PHash(0xF0F0F0F0F0F0F0F0)
    c.put(h, "a", now=0)
    assert c.get(PHash(h.value ^ 0b1011), now=5) == "a"  # 3 bits away
    assert c.get(PHash(h.value ^ 0b11111), now=5) is None  # 5 bits away
    assert c.get(h, now=10.5) is None and len(c) == 0  # expired on read
    values = [0, 0xFFFF, 0xFFFF << 16, 0xFFFF << 32, 0xFFFF << 48]  # pairwise ≥ 16 bits apart
    for i, v in enumerate(values):
        c.put(PHash(v), str(i), now=20)
    assert len(c) == 3 and c.get(PHash(0), now=21) is None and c.get(PHash(values[4]), now=21) == "4"
    assert (c.hits, c.misses) == (2, 3)
