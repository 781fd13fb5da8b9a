"""Policy file (``models/policy.toml``) and its word lists: loading and validation (I/O at the edge).

Errors name the file and line (:class:`~streamwatch.errors.PolicyError`), for ``check-config`` and
for a hot reload that must keep the previous policy. Evaluation is in :mod:`streamwatch.analysis.rules`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamwatch.analysis.text import WordList, WordListError, parse_t2s
from streamwatch.config import format_validation_error, locate_key
from streamwatch.errors import PolicyError
from streamwatch.events.model import Severity
from streamwatch.i18n import LANGS, Lang


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(_Strict):
    """Exactly one trigger: ``detector``, ``label``, ``ocr``, ``qr`` or ``health``."""

    detector: Annotated[str | None, Field(description="Analyzer whose labels trigger the rule (e.g. nudity).")] = None
    labels: Annotated[list[str], Field(description="Detector labels that count (empty = any).")] = []
    min_confidence: Annotated[float, Field(ge=0, le=1, description="Lowest detector/OCR confidence that counts.")] = 0.5
    ocr: Annotated[str | None, Field(description="Word list that on-screen text is matched against.")] = None
    allow: Annotated[str | None, Field(description="Word list of exceptions (e.g. the show's sponsors).")] = None
    qr: Annotated[Literal["any", "offsite"] | None, Field(description="any QR code, or one whose URL is off the allowlist.")] = None
    allow_domains: Annotated[list[str], Field(description="Domains (and their subdomains) a QR code may point to.")] = []
    label: Annotated[str | None, Field(description="A zero-shot label of the vision encoder (labels file).")] = None
    min_score: Annotated[float | None, Field(ge=-1, le=1, description="label: lowest score (cosine) that counts.")] = None
    health: Annotated[
        Literal["black", "frozen", "outage", "monitoring_gap", "storage", "no_video", "overloaded"] | None,
        Field(
            description="A stream health condition (monitoring_gap: the daemon was not running during a stream session; "
            "storage: the data folder takes no writes, e.g. a full disk; no_video: the source is up but sends audio only; "
            "overloaded: analysis fell behind and sampling is degraded)."
        ),
    ] = None
    min_s: Annotated[float, Field(ge=0, description="How long the health condition must last.")] = 0.0

    @model_validator(mode="after")
    def _one(self) -> When:
        given = [k for k in ("detector", "label", "ocr", "qr", "health") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"'when' needs exactly one of detector, label, ocr, qr, health (got {given or 'none'})")
        return self


class Messages(_Strict):
    """An alert text in both languages of the desk (``message = { zh = "…", en = "…" }``)."""

    zh: Annotated[str, Field(min_length=1, description="Simplified Chinese.")]
    en: Annotated[str, Field(min_length=1, description="English.")]


class RuleSpec(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", description="Rule id (in alerts and reports).")]
    when: When
    severity: Severity
    message: Annotated[
        str | Messages,
        Field(description="Alert text, or {zh, en}; {text} {label} {payload} {confidence} {duration} {rule} {started} {min_s}."),
    ]
    cooldown_s: Annotated[float, Field(ge=0, description="No repeat for the same evidence while it persists or within this time.")] = 60.0
    escalate: Annotated[bool, Field(description="Send to the VLM tier for a second opinion when one is configured.")] = False
    suggestion: Annotated[
        Literal["block", "review", "pass"] | None,
        Field(description="What integrations are told to do (webhooks); unset = block for critical/high, else review."),
    ] = None
    category: Annotated[str | None, Field(description="Category for integrations (unset = the trigger: detector, word list, qr…).")] = None
    action: Annotated[
        str | None, Field(pattern=r"^[a-z0-9_]+$", description="Action on the stream when it fires: cut, warn or an [[actions.http]] name.")
    ] = None
    auto: Annotated[bool, Field(description="Run the action at once; false: after a moderator confirms it (console button, key x).")] = (
        False
    )

    def text(self, lang: Lang) -> str:
        """The message template in ``lang`` (a plain string is the same in every language)."""
        m = self.message
        return m if isinstance(m, str) else getattr(m, lang)

    @model_validator(mode="after")
    def _message(self) -> RuleSpec:
        if isinstance(self.message, str) and not self.message:
            raise ValueError("message must not be empty")
        return self


class PolicySpec(_Strict):
    version: Literal[1] = 1
    lists: Annotated[dict[str, str], Field(description="Word list name → file (relative to the policy file).")] = {}
    t2s: Annotated[str | None, Field(description="Traditional → simplified table file.")] = None
    rule: Annotated[list[RuleSpec], Field(min_length=1, description="The rules.")]


TEMPLATE_FIELDS = {
    "text": "t",
    "label": "l",
    "payload": "p",
    "confidence": 0.5,
    "duration": 1.0,
    "rule": "r",
    "started": "00:00:00",
    "min_s": "3",
}


class Policy:
    """A validated policy: its rules and loaded word lists."""

    def __init__(self, spec: PolicySpec, lists: dict[str, WordList], path: Path | None = None) -> None:
        self.spec = spec
        self.rules = spec.rule
        self.lists = lists
        self.path = path


def _check_templates(spec: PolicySpec, text: str, where: str) -> None:
    ids = [r.id for r in spec.rule]
    for i, r in enumerate(spec.rule):
        if ids.count(r.id) > 1:
            raise PolicyError(f"{where}: rule id {r.id!r} is used twice")
        for lang in LANGS:
            try:
                r.text(lang).format(**TEMPLATE_FIELDS)
            except (KeyError, IndexError, ValueError) as e:
                line = locate_key(text, ("rule", i, "message"))
                at = f" (line {line})" if line else ""
                raise PolicyError(f"{where}: rule {r.id!r} message{at}: unknown or bad placeholder {e}") from e
        for name in (r.when.ocr, r.when.allow):
            if name is not None and name not in spec.lists:
                raise PolicyError(f"{where}: rule {r.id!r} uses word list {name!r}, which [lists] does not define")


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file and every word list it names."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"cannot read policy file {path}: {e.strerror or e}") from e
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{path}: {e}") from e
    try:
        spec = PolicySpec.model_validate(raw)
    except ValidationError as e:
        raise PolicyError(format_validation_error(e, str(path), text).replace("invalid configuration", "invalid policy")) from e
    _check_templates(spec, text, str(path))
    t2s: dict[str, str] = {}
    if spec.t2s:
        t2s = parse_t2s(_read_list(path.parent / spec.t2s, "t2s"))
    lists = {}
    for name, rel in spec.lists.items():
        file = path.parent / rel
        try:
            lists[name] = WordList.parse(name, _read_list(file, name), t2s)
        except WordListError as e:
            raise PolicyError(f"{file}: {e}") from e
    return Policy(spec, lists, path)


def _read_list(file: Path, name: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"word list {name!r}: cannot read {file}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise PolicyError(f"word list {name!r}: {file} is not UTF-8 text") from e
