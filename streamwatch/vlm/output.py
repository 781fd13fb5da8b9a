"""What a model's raw output is worth: reasoning split off, cut-off answers recognised, text cleaned.
Pure: strings in, values out.

- **Reasoning** is split off only where the model or server produces it: a ``reasoning`` /
  ``reasoning_content`` field, a model the registry marks as thinking, or ``<think>`` at the very start
  of the content. An instruct model's answer that merely contains ``</think>`` (twice, say) is left
  whole. An answer left inside the reasoning with empty content (Ollama's qwen3-vl) is recovered.
- **Cut off** is never an answer: ``finish_reason == "length"`` or reasoning opened and never closed
  (``<think>`` without ``</think>``) gives :attr:`Output.truncated`; the caller must not take it as a
  judgment (:class:`~streamwatch.errors.VLMTruncated`).
- **Cleaning**: control characters and U+FFFD go; an answer that is mostly such garbage is unusable;
  a length cap cuts at the last full sentence, never in the middle of one.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from streamwatch.errors import VLMOutputError

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.S)
_BOX = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.S)  # GLM-4.xV answer box
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)  # GLM-4.1V-Thinking
_SENTENCE_END = re.compile(r"[。！？!?…～~]|\.(?=\s|$)|[.!?。！？…][”」』\"')）]")
_CLAUSE_END = re.compile(r"[，、；,;：:]")
GARBLED_SHARE = 0.05  # answers with more control/replacement characters than this are unusable


@dataclass(frozen=True, slots=True)
class Output:
    """A model's answer after the reasoning was split off."""

    text: str  # the answer (GLM answer wrappers removed)
    reasoning: str = ""
    truncated: bool = False  # cut off by the token budget, or reasoning that never ended
    recovered: bool = False  # the answer came out of the reasoning (the content was empty)
    why: str = ""  # what cut it off, for logs and errors


def split_output(content: str, *, reasoning_field: str = "", thinks: bool = False, finish_reason: str | None = None) -> Output:
    """The answer in ``content``; ``reasoning_field`` is the server's separate reasoning (``reasoning``
    or ``reasoning_content``), ``thinks`` whether the model produces reasoning in its content (registry
    ``mode = "thinking"``), ``finish_reason`` the server's (``length`` = the budget cut it off)."""
    reasoning: list[str] = [reasoning_field.strip()] if reasoning_field.strip() else []
    text = content
    open_think = False
    lead = content.lstrip()
    if thinks and "</think>" in content:  # the first </think> closes the reasoning (the template may have opened it)
        head, _, text = content.partition("</think>")
        reasoning.append(head.replace("<think>", "").strip())
    elif lead.startswith("<think>"):
        m = _THINK_BLOCK.match(lead)
        if m:
            reasoning.append(m.group(1).strip())
            text = lead[m.end() :]
        else:  # reasoning that never ended: no answer
            reasoning.append(lead.removeprefix("<think>").strip())
            text, open_think = "", True
    elif thinks and "<think>" in content:
        head, _, rest = content.partition("<think>")
        reasoning.append(rest.strip())
        text, open_think = head, True
    recovered = False
    if not text.strip() and not open_think and reasoning_field.strip() and finish_reason != "length":
        # Ollama qwen3-vl: the whole answer in the reasoning field, the content empty
        inner = reasoning_field
        if "</think>" in inner:
            inner = inner.rpartition("</think>")[2]
        text, recovered = inner, True
    for pattern in (_ANSWER, _BOX):
        m = pattern.search(text)
        if m:
            text = m.group(1)
    truncated = finish_reason == "length" or open_think
    why = "the token budget ran out (finish_reason length)" if finish_reason == "length" else "reasoning never ended" if open_think else ""
    return Output(text.strip(), "\n".join(r for r in reasoning if r), truncated, recovered, why)


_SPACES = "\n\t\r\x0b\x0c"  # line breaks and spaces in disguise: folded, never counted as garbage


def _bad(c: str) -> bool:
    """A control character (other than line breaks and tabs), U+FFFD, or an unassigned/private code point."""
    if c in _SPACES or c == "\u200d":  # ZWJ joins emoji
        return False
    return c == "\ufffd" or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")


def clean_text(text: str, *, one_line: bool = False) -> str:
    """``text`` without control characters and U+FFFD (:class:`VLMOutputError` when more than
    ``GARBLED_SHARE`` of it is such garbage); runs of spaces folded, and all line breaks too with ``one_line``."""
    if not text:
        return ""
    bad = sum(1 for c in text if _bad(c))
    if bad > max(1, GARBLED_SHARE * len(text)):
        raise VLMOutputError(f"garbled answer: {bad} control or replacement characters in {len(text)}")
    kept = "".join(c for c in text if not _bad(c)).replace("\r\n", "\n")
    kept = "".join(" " if c in "\r\x0b\x0c" else c for c in kept)
    if one_line:
        return " ".join(kept.split())
    lines = (" ".join(line.split()) for line in kept.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def last_sentence_cut(text: str, limit: int) -> tuple[str, bool]:
    """``text`` within ``limit`` characters, ending at a full sentence: (text, whether it was cut).

    Whole text within the limit stays whole. Otherwise the cut falls after the last sentence end within
    the limit; without one, after the last clause break, marked with "…"; without either, at the limit
    and marked. ``""`` when nothing whole is left."""
    text = text.strip()
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= limit // 4:
        return head[: ends[-1]].rstrip(), True
    clauses = [m.start() for m in _CLAUSE_END.finditer(head[: limit - 1])]
    if clauses and clauses[-1] >= limit // 3:
        return head[: clauses[-1]].rstrip() + "…", True
    return head[: limit - 1].rstrip() + "…", True


def complete_sentences(text: str) -> str:
    """The part of a cut-off answer that ends at a full sentence (``""`` when there is none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


def strip_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning) of a thinking model's content (kept for callers of the old helper)."""
    out = split_output(text, thinks=True)
    return out.text, out.reasoning
