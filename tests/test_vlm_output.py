"""What a model's raw output is worth, as kinds with generated cases (issue 21): a cut-off answer is never
an answer, reasoning is split only where it is produced, output is cleaned and capped at full sentences,
a retry changes the request, thinking is switched per server family, and a critical verdict of the
model alone is lowered. Pure functions: no servers here (those are in test_vlm_robust.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from streamwatch.analysis.model import AlertDraft, Detection
from streamwatch.errors import VLMOutputError, VLMTruncated
from streamwatch.events.model import Severity
from streamwatch.vlm.backend import VLMRequest
from streamwatch.vlm.compliance import DEFAULT_QUESTIONS, compliance_schema, extract_json, parse_compliance
from streamwatch.vlm.openai_wire import build_body, image_limit_in, thinking_fields
from streamwatch.vlm.output import clean_text, complete_sentences, last_sentence_cut, split_output
from streamwatch.vlm.prompts import clean_answer, clean_reply
from streamwatch.vlm.registry import Capability, ModelSpec, load_registry
from streamwatch.vlm.retry import BAD_OUTPUT, TRUNCATED, Attempt, retry_request
from streamwatch.vlm.schema import follows
from streamwatch.vlm.verdict import second_opinion

MODELS = Path(__file__).resolve().parents[1] / "models"


def answer_json(rng: random.Random) -> str:
    value = {
        "exposure": rng.random() < 0.5,
        "setting": rng.choice(["indoor_stage", "studio", "outdoor", "other"]),
        "brands": rng.sample(["Pepsi", "Monster Energy", "李宁", "Nike"], rng.randint(0, 3)),
        "text": rng.sample(["加微信 abc123", "今晚见", "扫码领红包", "VX: 888"], rng.randint(0, 3)),
        "outfit": rng.choice(["", "white dress", "红色外套"]),
        "objects": ["microphone"],
        "confidence": round(rng.random(), 2),
    }
    return json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))


# --- 1: a cut-off answer is never a judgment ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_json_cut_anywhere_is_never_completed_into_an_answer(seed: int) -> None:
    rng = random.Random(seed)
    text = answer_json(rng)
    whole = parse_compliance(text, DEFAULT_QUESTIONS, "m")
    assert whole.confidence == json.loads(text)["confidence"]
    wrappers = [("", ""), ("```json\n", ""), ("Sure! Here it is: ", "")]
    for cut in range(text.index("{") + 1, len(text) - 1):
        head, tail = rng.choice(wrappers)
        with pytest.raises(VLMOutputError) as e:  # cut-off JSON: VLMTruncated (never repaired, never a "nothing seen")
            parse_compliance(head + text[:cut] + tail, DEFAULT_QUESTIONS, "m")
        assert isinstance(e.value, VLMTruncated), (cut, text[:cut])


@pytest.mark.parametrize(
    ("content", "thinks", "finish", "why"),
    [
        ('{"exposure": false, "setting": "indoor_stage", "brands": []', False, "length", "budget"),
        ('{"exposure": false}', False, "length", "budget"),  # closed by luck, but the budget ran out: still cut off
        ("<think>the user wants JSON, let me look at the stage", False, "stop", "never ended"),
        ("  \n<think>long reasoning", True, "stop", "never ended"),
        ("the template opened the block and the model kept thinking", True, "length", "budget"),
        ("preamble <think>reasoning", True, "stop", "never ended"),
    ],
)
def test_cut_off_outputs_are_marked_truncated(content: str, thinks: bool, finish: str, why: str) -> None:
    out = split_output(content, thinks=thinks, finish_reason=finish)
    assert out.truncated and why in out.why


# --- 6: reasoning split only where it is produced ------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_an_instruct_answer_mentioning_think_tags_is_kept_whole(seed: int) -> None:
    rng = random.Random(seed)
    parts = [rng.choice(["舞台上有一个人。", "The tag </think> closes reasoning.", "Use <think> and </think>.", "OK."]) for _ in range(5)]
    content = " ".join(parts)
    if "</think>" not in content:
        content += " Twice: </think> and </think>."
    out = split_output(content, thinks=False, finish_reason="stop")
    assert out.text == content.strip() and out.reasoning == "" and not out.truncated


def test_reasoning_comes_from_the_field_the_start_tag_or_a_thinking_model() -> None:
    # a reasoning block at the very start of an instruct model's content
    out = split_output("<think>stage, two people</think>\n\nTwo singers.", finish_reason="stop")
    assert (out.text, out.reasoning) == ("Two singers.", "stage, two people")
    # a thinking model whose template opened the block: the first </think> closes it
    out = split_output("looking…</think>The answer mentions </think> once.", thinks=True)
    assert out.text == "The answer mentions </think> once." and out.reasoning == "looking…"
    # vLLM / llama.cpp reasoning_content, Ollama reasoning: kept apart from the content
    for field in ("reasoning_content", "reasoning"):
        out = split_output("Two singers.", reasoning_field=f"{field}: I see a stage")
        assert out.text == "Two singers." and field in out.reasoning and not out.recovered
    # Ollama qwen3-vl: the whole answer inside the reasoning, content empty → recovered
    out = split_output("", reasoning_field='Let me check.</think>{"exposure": false}', finish_reason="stop")
    assert out.recovered and out.text == '{"exposure": false}'
    out = split_output("", reasoning_field="Two singers on a stage.", finish_reason="stop")
    assert out.recovered and out.text == "Two singers on a stage."
    # …but not when the budget ran out in the reasoning
    out = split_output("", reasoning_field="Let me think about", finish_reason="length")
    assert out.truncated and not out.recovered and out.text == ""
    # GLM answer wrappers
    assert split_output("<think>x</think><answer>是<|begin_of_box|>yes<|end_of_box|></answer>", thinks=True).text == "yes"


# --- 5: cleaned output, length caps at full sentences ------------------------------------------------

SENTENCES = ["今天的舞台真漂亮！", "谢谢你的图片。", "The lights are amazing!", "你穿的外套好可爱～", "See you tonight.", "要开心哦？"]


@pytest.mark.parametrize("seed", range(8))
def test_control_and_replacement_characters_never_reach_anyone(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(SENTENCES) for _ in range(rng.randint(4, 12)))
    junk = [chr(c) for c in (*range(9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0x85, 0x200B, 0xFEFF)] + ["\ufffd"]
    few = list(text)
    for _ in range(max(1, len(text) // 60)):
        few.insert(rng.randrange(len(few)), rng.choice(junk))
    for cleaned in (clean_reply("".join(few), 10_000), clean_answer("".join(few), 10_000), clean_text("".join(few))):
        assert not any(c in junk for c in cleaned) and cleaned
    many = list(text)
    for _ in range(len(text) // 5):  # a reply with 7 control characters and 24 U+FFFD: garbled, unusable
        many.insert(rng.randrange(len(many)), rng.choice(junk))
    with pytest.raises(VLMOutputError, match="garbled"):
        clean_reply("".join(many), 10_000)


@pytest.mark.parametrize("seed", range(8))
def test_caps_cut_at_the_last_full_sentence(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(SENTENCES) for _ in range(rng.randint(8, 40)))
    limit = rng.randint(20, 120)
    for cut in (clean_reply(text, limit), clean_answer(text, limit)):
        assert len(cut) <= limit
        assert cut == text[: len(cut)]  # a prefix: nothing invented
        assert cut[-1] in "！。!～.？" and any(cut.endswith(s) for s in SENTENCES)
    # no sentence end within the limit: cut at a clause and marked, never mid-word silently
    clause, cut = last_sentence_cut("a" * 50 + "，" + "b" * 100, 80)
    assert clause == "a" * 50 + "…" and cut
    assert last_sentence_cut("short.", 80) == ("short.", False)
    assert complete_sentences("Two singers. One guit") == "Two singers."
    assert complete_sentences("no sentence end yet") == ""


# --- 7: a schema the server ignores --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_answers_are_checked_against_the_schema_sent(seed: int) -> None:
    rng = random.Random(seed)
    schema = compliance_schema(DEFAULT_QUESTIONS)
    good = answer_json(rng)
    assert follows(good, schema) == []
    value = json.loads(good)
    gone = rng.choice(list(value))
    broken = [
        "Sure! " + good,  # prose around it: not what an enforcing server returns
        "```json\n" + good + "\n```",
        json.dumps({k: v for k, v in value.items() if k != gone}),  # a key missing
        json.dumps({**value, "exposure": "yes"}),  # wrong type
        json.dumps({**value, "setting": "bathroom"}),  # not in the enum
        json.dumps({**value, "confidence": "high"}),  # not a number
        json.dumps({**value, "mood": "happy"}),  # additionalProperties false
    ]
    for text in broken:
        assert follows(text, schema), text
    assert extract_json(broken[1]) == value  # asked by instruction, a fence is still read
    assert follows('{"n": 7}', '{"type": "object", "properties": {"n": {"type": "number", "maximum": 1}}}')
    # the model's own confidence, read leniently and clamped to 0-1; none given: 0, never a made-up constant
    for raw, conf in ((0.35, 0.35), ("80%", 0.8), (7, 0.07), (1500, 1.0), (-2, 0.0), ("high", 0.0), (None, 0.0), (True, 0.0)):
        assert parse_compliance(json.dumps({**value, "confidence": raw}), DEFAULT_QUESTIONS, "m").confidence == pytest.approx(conf)


# --- 4: a retry changes something ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [TRUNCATED, BAD_OUTPUT])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_a_retry_of_bad_output_is_never_the_identical_request(kind: str, temperature: float) -> None:
    for schema in (None, compliance_schema(DEFAULT_QUESTIONS)):
        req = VLMRequest("describe", (b"jpeg",), "sys", 256, schema, temperature, Capability.COMPLIANCE)
        again = retry_request(req, Attempt(2, 0.0, kind, "m: malformed JSON in the answer: '{'"))
        assert again != req and again.prompt != req.prompt
        if kind == TRUNCATED:
            assert again.max_tokens == 512 and again.thinking is False
        else:
            assert again.temperature > req.temperature or temperature == 1.0
            assert "malformed JSON" in again.prompt
    assert retry_request(req, Attempt(1, 0.0)) is req


# --- thinking per role, per server family ---------------------------------------------------------------


def model(server: str, mode: str = "thinking", think: list[str] | None = None) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": "m", "backend": "openai", "endpoint": "http://127.0.0.1:1/v1", "model_name": "m", "capabilities": ["compliance", "reply"]}
        | {"server": server, "mode": mode, "think": think}
    )


@pytest.mark.parametrize(
    ("server", "off", "on"),
    [
        ("vllm", {"chat_template_kwargs": {"enable_thinking": False}}, {"chat_template_kwargs": {"enable_thinking": True}}),
        ("sglang", {"chat_template_kwargs": {"enable_thinking": False}}, {"chat_template_kwargs": {"enable_thinking": True}}),
        ("ollama", {"reasoning_effort": "none"}, {}),
        ("llamacpp", {}, {}),  # only the server's --reasoning-format flag
        ("transformers", {}, {}),
    ],
)
def test_thinking_is_switched_per_role_the_way_each_server_takes_it(server: str, off: dict[str, object], on: dict[str, object]) -> None:
    assert thinking_fields(server, False) == off and thinking_fields(server, True) == on and thinking_fields(server, None) == {}
    spec = model(server, think=["reply"])
    keys = ("chat_template_kwargs", "reasoning_effort")
    for role, want in ((Capability.COMPLIANCE, off), (Capability.REPLY, on)):
        body = build_body(spec, VLMRequest("q", role=role), with_schema=False)
        assert {k: body[k] for k in keys if k in body} == want
    forced = build_body(spec, VLMRequest("q", role=Capability.REPLY, thinking=False), with_schema=False)  # a retry of a cut-off
    assert {k: forced[k] for k in keys if k in forced} == off
    assert not set(keys) & set(build_body(model(server, mode="instruct"), VLMRequest("q", role=Capability.REPLY), with_schema=False))


def test_server_presets_load_and_document_each_family() -> None:
    presets = sorted((MODELS / "presets").glob("*.json"))
    assert {p.stem for p in presets} >= {"vllm", "sglang", "ollama", "llamacpp"}
    for p in presets:
        reg = load_registry(p)
        specs = [m for m in reg.models.values() if m.backend == "openai"]
        assert specs and all(m.server == p.stem for m in specs), p
    readme = (MODELS / "presets" / "README.md").read_text()
    for needle in ("enable_thinking", "reasoning_effort", "--reasoning-format", "--limit-mm-per-prompt"):
        assert needle in readme


# --- 2: image limits stated by a refusal ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("detail", "n"),
    [
        ('{"object":"error","message":"At most 1 image(s) may be provided in one request.","code":400}', 1),
        ("At most 3 image(s) may be provided in one request.", 3),
        ('{"error": {"message": "too many images in request (max 2)"}}', 2),
        ("This model supports a maximum of 4 images per request", 4),
        ('{"error": {"message": "invalid request"}}', None),
        ("height and width must be larger than factor 28, got (24, 24)", None),
    ],
)
def test_image_limits_are_read_from_refusals(detail: str, n: int | None) -> None:
    assert image_limit_in(detail) == n


# --- 9: a critical verdict of the model alone ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_a_critical_model_verdict_needs_the_nudity_detector_or_is_lowered(seed: int) -> None:
    rng = random.Random(seed)
    confidence = round(rng.uniform(0.05, 1.0), 2)
    answer = parse_compliance(answer_json(rng).replace('"exposure": false', '"exposure": true'), DEFAULT_QUESTIONS, "tiny")
    answer = type(answer)(answer.answers, answer.model, confidence)
    det = next(d for d in answer.detections() if d.label == "exposure")
    assert det.confidence == confidence  # the model's own, never a constant
    draft = AlertDraft("vlm_exposure", Severity.CRITICAL, "Compliance model: exposure", det.confidence, "vlm:tiny", "exposure")
    other = AlertDraft("contact_spam", Severity.HIGH, "Contact", 0.9, "ocr", "wx")
    covered = Detection("nudity", "FEMALE_BREAST_COVERED", 0.9)
    weak = Detection("nudity", "BUTTOCKS_EXPOSED", 0.1)
    for local in ((), (covered,), (weak,), (Detection("ocr", "text", 1.0, text="x"),)):
        lowered, kept = second_opinion([draft, other], local)
        assert lowered.severity is Severity.HIGH and "model only" in lowered.message and lowered.confidence == confidence
        assert kept == other
    seen = Detection("nudity", rng.choice(["FEMALE_BREAST_EXPOSED", "MALE_GENITALIA_EXPOSED"]), rng.uniform(0.3, 1.0))
    (confirmed,) = second_opinion([draft], (covered, seen))
    assert confirmed.severity is Severity.CRITICAL and "confirmed by the nudity detector" in confirmed.message
