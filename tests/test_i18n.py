"""The desk's language and time zone: the shipped policy's messages in zh and en, health texts, the
matched word (never a word list's regex) in labels and messages, and show times in a zone."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamwatch.analysis.model import Detection, FrameAnalysis
from streamwatch.analysis.policy import TEMPLATE_FIELDS, load_policy
from streamwatch.analysis.rules import RuleEngine
from streamwatch.analysis.text import normalize
from streamwatch.errors import PolicyError
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.i18n import LANGS, TEXTS, UIConfig, describe_health, local_time

MODELS = Path(__file__).resolve().parent.parent / "models"
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize(
    "values",
    [
        dict(TEMPLATE_FIELDS),
        {**TEMPLATE_FIELDS, "text": "join now", "label": "Nike", "payload": "https://x.example/a?b=1", "confidence": 0.0,
         "duration": 3600.5},
        {**TEMPLATE_FIELDS, "text": "", "label": "", "payload": "", "confidence": 1.0, "duration": 0.0, "started": "12:34:56",
         "min_s": "0"},
    ],
)  # fmt: skip
def test_every_shipped_rule_speaks_both_languages(values: dict[str, object]) -> None:
    policy = load_policy(MODELS / "policy.toml")
    for rule in policy.rules:
        zh, en = (rule.text(lang).format(**values) for lang in LANGS)
        assert CJK.search(zh), (rule.id, zh)  # Chinese around whatever was filled in
        assert not CJK.search(en), (rule.id, en)
        assert "{" not in zh + en and zh != en


def test_a_placeholder_wrong_in_one_language_names_the_line(tmp_path: Path) -> None:
    shutil.copytree(MODELS, tmp_path / "m")
    p = tmp_path / "m" / "policy.toml"
    text = p.read_text(encoding="utf-8")
    for lang, bad in (("zh", "{paylod}"), ("en", "{payload!x}")):
        pattern = rf'(id = "qr_code".*?{lang} = ")([^"]*)"'
        broken = re.sub(pattern, lambda m, b=bad: f'{m.group(1)}{m.group(2)} {b}"', text, count=1, flags=re.S)
        assert broken != text
        p.write_text(broken, encoding="utf-8")
        with pytest.raises(PolicyError, match=r"rule 'qr_code' message \(line \d+\)"):
            load_policy(p)


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("关注主播 加微信 xiaomei88 领福利", "contact_spam"),
        ("+vx:hello_world9", "contact_spam"),
        ("加薇信 abc12345 送礼物", "contact_spam"),
        ("加 V 信 zhangsan99", "contact_spam"),
        ("QQ群：12345678 进群", "contact_spam"),
        ("扣扣 987654321", "contact_spam"),
        ("wechat id: lucky_star7", "contact_spam"),
    ],
)
def test_moderators_see_the_matched_word_never_the_word_lists_regex(line: str, rule: str) -> None:
    policy = load_policy(MODELS / "policy.toml")
    for lang in LANGS:
        (draft,) = [d for d in RuleEngine(policy, lang).evaluate(_ocr(line)) if d.rule == rule]
        norm = normalize(line, policy.lists["contact"].t2s)
        for label in draft.labels:
            assert not label.startswith("re:") and not re.search(r"[()|\\\[\]{}?*]", label), label
            assert any(label in form for form in (norm.compact, norm.words, norm.digits)), (label, norm)  # on screen, not the pattern
        assert "re:" not in draft.message


def _ocr(text: str) -> FrameAnalysis:
    return FrameAnalysis("s", 1.0, 0.0, 0.0, (Detection("ocr", "text", 0.95, (0, 0, 10, 10), text),), 640, 360)


def _health() -> list[HealthEvent]:
    out = [HealthEvent(stream="s", at=0.0, offset=1.0, kind=HealthKind.STATE, state=st) for st in StreamState]
    out += [HealthEvent(stream="s", at=0.0, offset=1.0, kind=HealthKind.STATE, state=StreamState.LIVE, gap_s=5.25, caused_by=9)]
    out += [HealthEvent(stream="s", at=0.0, offset=1.0, kind=HealthKind.STATE, state=StreamState.RECONNECTING, attempt=3, reason="r")]
    for kind in HealthKind:
        for active in (True, False):
            out.append(HealthEvent(stream="s", at=0.0, offset=1.0, kind=kind, active=active, duration_s=4.0))
    return out


def test_health_texts_in_both_languages() -> None:
    for ev in _health():
        zh, en = describe_health(ev, "zh"), describe_health(ev, "en")
        assert CJK.search(zh) and not CJK.search(en), (zh, en)
        assert ev.describe() == en and ev.describe("zh") == zh
        if ev.caused_by is not None:
            assert "#9" in zh and "#9" in en and "非故障" in zh
    # the English wording logs and tools already read stays as it was
    assert _health()[len(StreamState) + 1].describe() == "reconnecting (attempt 3): r"
    assert describe_health(HealthEvent(stream="s", at=0, offset=0, kind=HealthKind.FROZEN, active=False, duration_s=4), "en") == (
        "frozen ended after 4.0s"
    )
    for key, entry in TEXTS.items():  # every line of the catalogue in both languages
        assert set(entry) == set(LANGS), key


@pytest.mark.parametrize(
    ("ts", "tz", "want"),
    [
        (datetime(2026, 7, 1, 12, 0, tzinfo=UTC).timestamp(), "Asia/Shanghai", "2026-07-01 20:00:00 CST"),
        (datetime(2026, 7, 1, 12, 0, tzinfo=UTC).timestamp(), "Europe/London", "2026-07-01 13:00:00 BST"),
        (datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp(), "Europe/London", "2026-12-01 12:00:00 GMT"),
        (datetime(2026, 12, 31, 20, 0, tzinfo=UTC).timestamp(), "Asia/Shanghai", "2027-01-01 04:00:00 CST"),
        (datetime(2026, 1, 1, 0, 0, tzinfo=UTC).timestamp(), "UTC", "2026-01-01 00:00:00 UTC"),
        (datetime(2026, 1, 1, 0, 0, tzinfo=UTC).timestamp(), "Asia/Kolkata", "2026-01-01 05:30:00 IST"),
    ],
)
def test_show_times_in_the_shows_zone(ts: float, tz: str, want: str) -> None:
    assert local_time(ts, tz) == want


def test_ui_settings() -> None:
    assert UIConfig().language == "zh" and UIConfig().timezone == "Asia/Shanghai"
    for bad in ({"timezone": "Mars/Olympus"}, {"timezone": ""}, {"language": "fr"}, {"colour": "red"}):
        with pytest.raises(ValueError):
            UIConfig.model_validate(bad)
