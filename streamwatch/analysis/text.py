"""Text normalisation and word-list matching that survive what streams and OCR do. Pure.

Two normal forms of a text are matched:

* ``compact``: NFKC (full-width → half-width, ① → 1), case-folded, traditional → simplified where
  the table knows the character, and everything that is not a letter or digit removed — so
  "加 微-信", "加　微．信" and "加微信" are the same. CJK entries match here.
* ``words``: the same, but with non-alphanumerics turned into single spaces and runs of
  single-letter tokens joined ("n.i.k.e", "N I K E" → "nike"). Latin entries match here on word
  boundaries, so "nike" does not fire inside "unikemon".

Digit regexes (QQ numbers and the like) also see Chinese numerals as digits ("扣扣 一二三…").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_CN_DIGITS = str.maketrans("〇零一二三四五六七八九壹贰叁肆伍陆柒捌玖", "0012345678912345678" + "9")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


@dataclass(frozen=True, slots=True)
class Normalized:
    original: str
    compact: str
    words: str
    digits: str  # compact, with Chinese numerals as digits


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\U00020000" <= ch <= "\U0002ffff"


def normalize(text: str, t2s: Mapping[str, str] | None = None) -> Normalized:
    t = unicodedata.normalize("NFKC", text.translate(_INVISIBLE)).casefold()
    if t2s:
        t = "".join(t2s.get(ch, ch) for ch in t)
    compact = "".join(ch for ch in t if ch.isalnum())
    # words form: separators become spaces, and so does every switch between CJK and Latin/digits
    parts: list[str] = []
    prev_cjk: bool | None = None
    for ch in t:
        if not ch.isalnum():
            parts.append(" ")
            prev_cjk = None
            continue
        cjk = _is_cjk(ch)
        if prev_cjk is not None and cjk != prev_cjk:
            parts.append(" ")
        parts.append(ch)
        prev_cjk = cjk
    spaced = "".join(parts)
    tokens: list[str] = []
    run: list[str] = []
    for tok in spaced.split():
        if len(tok) == 1 and not _is_cjk(tok):
            run.append(tok)
            continue
        if run:
            tokens.append("".join(run))
            run = []
        tokens.append(tok)
    if run:
        tokens.append("".join(run))
    return Normalized(text, compact, " ".join(tokens), compact.translate(_CN_DIGITS))


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a word list: a literal (normalised like the text) or a ``re:`` regular expression."""

    source: str
    line: int
    pattern: re.Pattern[str]
    latin: bool  # matched on word boundaries in the ``words`` form
    regex: bool


@dataclass(frozen=True, slots=True)
class Match:
    entry: str  # the list line that matched
    found: str  # the matched text in its normal form


class WordListError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class WordList:
    """Entries from a plain-text list: one per line, ``#`` comments, ``re:`` prefix for a regex.

    Regexes run against the compact form and its digit form (so write them without spaces or
    punctuation: ``re:(qq|扣扣)\\d{5,11}``).
    """

    def __init__(self, name: str, entries: list[Entry], t2s: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.entries = entries
        self.t2s = t2s

    @classmethod
    def parse(cls, name: str, text: str, t2s: Mapping[str, str] | None = None) -> WordList:
        entries = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("re:"):
                try:
                    pat = re.compile(line[3:].strip())
                except re.error as e:
                    raise WordListError(n, f"bad regular expression {line[3:].strip()!r}: {e}") from e
                entries.append(Entry(line, n, pat, latin=False, regex=True))
                continue
            norm = normalize(line, t2s)
            if not norm.compact:
                raise WordListError(n, f"entry {line!r} has no letters or digits")
            latin = norm.compact.isascii()
            if latin:  # "coca cola" also as "cocacola"
                forms = dict.fromkeys([norm.words, norm.compact])
                pat = re.compile(r"\b(?:" + "|".join(map(re.escape, forms)) + r")\b")
            else:
                pat = re.compile(re.escape(norm.compact))
            entries.append(Entry(line, n, pat, latin=latin, regex=False))
        return cls(name, entries, t2s)

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, text: str | Normalized) -> list[Match]:
        norm = text if isinstance(text, Normalized) else normalize(text, self.t2s)
        out = []
        for e in self.entries:
            if e.regex:
                m = e.pattern.search(norm.compact) or e.pattern.search(norm.digits)
            else:
                m = e.pattern.search(norm.words if e.latin else norm.compact)
            if m:
                out.append(Match(e.source, m.group(0)))
        return out

    def matches(self, text: str | Normalized) -> bool:
        return bool(self.find(text))


def parse_t2s(text: str) -> dict[str, str]:
    """A traditional → simplified table: lines of ``繁简`` pairs (or ``繁 简``), ``#`` comments."""
    table: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].replace(" ", "").replace("\t", "")
        if not line:
            continue
        if len(line) % 2:
            raise WordListError(n, "expected pairs of characters (traditional then simplified)")
        for i in range(0, len(line), 2):
            table[line[i]] = line[i + 1]
    return table


def joined(lines: Iterable[str]) -> str:
    """OCR lines of one frame as one text (lines joined with a space, so words do not merge)."""
    return " ".join(lines)
