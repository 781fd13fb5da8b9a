"""Masking URLs for display (streamwatch.redact), as a kind: generated URLs of every shape CDNs use,
with secrets of several alphabets in every position, alone and quoted inside library messages."""

from __future__ import annotations

import doctest
import io
import json
import logging
import random
import string
from dataclasses import dataclass
from urllib.parse import quote, unquote

import pytest

import streamwatch.ingest.url
import streamwatch.redact
from streamwatch.errors import SourceOpenError, SourceTimeout
from streamwatch.events.codec import decode, encode_body, with_id
from streamwatch.events.model import HealthEvent, HealthKind, StreamState
from streamwatch.ingest.url import parse_source, redact_url
from streamwatch.redact import MASK, MaskingFilter, install_log_masking, mask_text, mask_url

# (template, names of query parameters it carries). {key} is an RTMP stream key, {user} a user name,
# {s1}/{s2}/{s3} secrets: all hidden; {host}, {p} (an unknown parameter name) and {name} (an HTTP-FLV
# stream name, which is no credential) are shown.
SHAPES = [
    ("rtmp://{host}/live/{key}?txSecret={s1}&txTime={s2}", ["txSecret", "txTime"]),  # Tencent
    ("rtmps://{host}/app/instance/{key}?sign={s1}&Expires={s2}", ["sign", "Expires"]),
    ("http://{host}/live/{name}.flv?wsSecret={s1}&wsTime={s2}", ["wsSecret", "wsTime"]),  # Wangsu http-flv
    ("https://{host}/hls/master.m3u8?auth_key={s1}", ["auth_key"]),  # Aliyun
    ("http://{host}/hls/seg-00042.ts?auth_key={s1}&{p}={s2}", ["auth_key", "{p}"]),  # a segment URL
    ("rtsp://{user}:{s1}@{host}/cam/1?token={s2}", ["token"]),
    ("rtsp://{user}:{s1}@{host}/cam/1", []),
    ("srt://{host}?passphrase={s1}&streamid={s2}", ["passphrase", "streamid"]),
    ("rtmp://{user}:{s1}@{host}/live/{key}#{s2}", []),
    ("https://{host}/v/index.m3u8?{p}={s1}&Signature={s2}&Key-Pair-Id={s3}", ["{p}", "Signature", "Key-Pair-Id"]),
    ("http://{host}/live/{name}.flv?{p}={s1}&{p}2={s2}", ["{p}", "{p}2"]),  # names nobody listed
    ("https://{host}/a.m3u8?{s1}", []),  # a bare token, no name
]
HOSTS = ["127.0.0.1:1935", "cdn.example.com", "pull-l3.douyincdn.com:8080", "[::1]:8554", "10.0.0.7"]


def _secret(rng: random.Random) -> tuple[str, str]:
    """(the secret as it appears in the URL, its core that must never be shown): several alphabets."""
    core = "S" + "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(8, 24)))
    form = rng.choice(["plain", "hex", "percent", "base64ish", "dashed"])
    if form == "hex":
        core = "5EC" + "".join(rng.choices("0123456789abcdef", k=32))
        return core, core
    if form == "percent":  # a signature with + / = in it, percent-encoded as a CDN would
        return quote(core + "+/" + core[::-1] + "==", safe=""), core
    if form == "base64ish":
        return core + "-_~" + core[::-1], core
    if form == "dashed":  # Aliyun auth_key: timestamp-rand-uid-md5
        return f"{rng.randint(1_600_000_000, 1_900_000_000)}-0-0-{core}", core
    return core, core


@dataclass(frozen=True)
class Case:
    url: str
    secrets: tuple[str, ...]  # cores that must not be displayed
    names: tuple[str, ...]
    kept: tuple[str, ...]  # host, and a stream name where there is one: shown as they are


def _cases(n: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        template, names = SHAPES[i % len(SHAPES)]
        p = "x" + "".join(rng.choices(string.ascii_lowercase, k=5))
        fields, secrets = {"host": rng.choice(HOSTS), "p": p}, []
        for slot in ("s1", "s2", "s3"):
            shown, core = _secret(rng)
            fields[slot] = shown
            secrets.append(core)
        fields["key"] = "KEY" + "".join(rng.choices(string.ascii_letters + string.digits, k=12))
        fields["user"] = "U" + "".join(rng.choices(string.ascii_lowercase, k=6))
        fields["name"] = "room" + str(rng.randint(1, 999))
        url = template.format(**fields)
        used = [s for s, slot in zip(secrets, ("s1", "s2", "s3"), strict=True) if "{" + slot + "}" in template]
        used += [fields[k] for k in ("key", "user") if "{" + k + "}" in template]
        kept = tuple(fields[k] for k in ("host", "name") if "{" + k + "}" in template)
        out.append(Case(url, tuple(used), tuple(nm.replace("{p}", p) for nm in names), kept))
    return out


CASES = _cases(120, seed=24)

# How libraries quote a URL they failed on (PyAV/FFmpeg, urllib, our own messages, JSON).
TEXTS = [
    "[Errno 5] Input/output error: '{url}'",
    "[hls @ 0x55d5c0a1b2c0] Opening '{url}' for reading",
    "HLS request for url '{url}', offset 0, playlist 0",
    "cannot open {url}: Connection refused",
    "connection lost ({url}).",
    '{{"source": "{url}", "state": "live"}}',
    "{url}",
    "reconnecting: <{url}> after 3 attempts",
]


def _assert_hidden(text: str, case: Case) -> None:
    for s in case.secrets:
        assert s not in text and s not in unquote(text), f"{s!r} shown in {text!r}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.url[:40])
def test_every_secret_in_every_shape_is_masked_and_names_and_host_are_kept(case: Case) -> None:
    assert all(s in case.url for s in case.secrets)  # planted, so their absence below means something
    shown = mask_url(case.url)
    _assert_hidden(shown, case)
    assert all(k in shown for k in case.kept)
    for name in case.names:
        assert f"{name}={MASK}" in shown
    assert mask_url(shown) == shown  # idempotent: masked text is never mangled further
    assert redact_url(case.url) == shown  # the old helper is the same rule


@pytest.mark.parametrize("case", CASES[:48], ids=lambda c: c.url[:40])
def test_urls_quoted_inside_library_messages_are_masked_and_the_rest_kept(case: Case) -> None:
    for template in TEXTS:
        text = template.format(url=case.url)
        masked = mask_text(text)
        _assert_hidden(masked, case)
        assert masked == template.format(url=mask_url(case.url)), text
        assert mask_text(masked) == masked


def test_the_real_url_is_kept_for_connecting() -> None:
    for case in CASES:
        try:
            spec = parse_source(case.url)
        except ValueError:
            continue  # shapes parse_source refuses (srt, bare tokens) are still masked above
        assert spec.url == case.url
        _assert_hidden(spec.redacted, case)


def test_urls_and_queries_in_free_text() -> None:
    text = "Proto = rtmp, path = /live/k?txSecret=ab12&txTime=67AB, app = live. Q&A: what? ok."
    assert mask_text(text) == "Proto = rtmp, path = /live/k?txSecret=***&txTime=***, app = live. Q&A: what? ok."
    assert mask_text("no url here: 5 frames, 2 s") == "no url here: 5 frames, 2 s"
    assert mask_url("/videos/show.mp4") == "/videos/show.mp4" and mask_url("C:\\videos\\a.mp4") == "C:\\videos\\a.mp4"
    # a password holding an unencoded "/": everything up to the last "@" is masked, never shown as a host
    assert mask_url("rtsp://admin:pa/ss@10.0.0.7/cam") == "rtsp://***@10.0.0.7/cam"
    assert mask_url("rtmp://h/live") == "rtmp://h/live"  # an application, no key
    assert mask_url("http://h/x.m3u8?a=&b") == "http://h/x.m3u8?a=&***"  # empty values stay empty


# --- the boundaries: errors, health events, logs ----------------------------------------------------


def test_ingest_errors_mask_urls_whatever_the_call_site_passed() -> None:
    for case in CASES[:24]:
        for err in (SourceOpenError(f"cannot open: [Errno 5] Input/output error: '{case.url}'"), SourceTimeout(case.url)):
            _assert_hidden(str(err) + repr(err) + repr(err.args), case)
    assert isinstance(SourceOpenError("x"), ConnectionError)


def test_health_reasons_are_masked_in_the_event_its_json_and_describe() -> None:
    for case in CASES[:24]:
        ev = HealthEvent(
            stream="s", at=1.0, offset=2.0, kind=HealthKind.STATE, state=StreamState.RECONNECTING, reason=f"connection lost: {case.url}"
        )
        body = encode_body(ev)
        _assert_hidden(ev.reason + ev.describe() + body, case)
        assert decode(with_id(7, body)).reason == ev.reason  # type: ignore[attr-defined]


def _logger_with_masking() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("sw-redact-test")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    root.propagate = False
    install_log_masking(root)
    install_log_masking(root)  # once only
    assert sum(isinstance(f, MaskingFilter) for f in handler.filters) == 1
    return root, out


def test_log_filter_masks_args_tracebacks_and_child_loggers() -> None:
    log, out = _logger_with_masking()
    child = logging.getLogger("sw-redact-test.libav.hls")  # a record from a child reaches the handler's filter
    for case in CASES[:36]:
        log.info("[%s] opening %s", "s1", case.url)
        child.debug("Opening '%s' for reading", case.url)
        try:
            raise OSError(5, "Input/output error", case.url)
        except OSError:
            log.exception("stream %s failed", "s1")
        log.warning("with a stack %s", case.url, stack_info=True)
        _assert_hidden(out.getvalue(), case)
    text = out.getvalue()
    assert "Traceback" in text and "Opening 'http" in text and f"={MASK}" in text
    assert json.dumps(text)  # still text


def test_log_filter_leaves_plain_records_alone() -> None:
    log, out = _logger_with_masking()
    log.info("stream %s live at %.1fs (%d%%)", "s1", 2.0, 50)
    assert out.getvalue() == "sw-redact-test INFO stream s1 live at 2.0s (50%)\n"


def test_docstring_examples() -> None:
    for module in (streamwatch.redact, streamwatch.ingest.url):
        result = doctest.testmod(module)
        assert result.attempted and not result.failed


def test_uncaught_errors_in_the_cli_process_print_masked_tracebacks() -> None:
    """An error that escapes (main thread or a thread) after the CLI's logging setup: the traceback
    is still printed, with the URL it quotes masked."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for case in CASES[:12]:
        script = (
            "import sys, threading\n"
            "from streamwatch.cli import _setup_logging\n"
            "_setup_logging('INFO')\n"
            "def boom(): raise OSError(5, 'Input/output error', sys.argv[1])\n"
            "t = threading.Thread(target=boom, name='reader'); t.start(); t.join()\n"
            "boom()\n"
        )
        env = {**os.environ, "PYTHONPATH": str(root)}
        r = subprocess.run([sys.executable, "-c", script, case.url], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        assert r.stderr.count("Traceback") == 2 and "Exception in thread reader" in r.stderr and "OSError" in r.stderr
        _assert_hidden(r.stderr, case)
        assert mask_url(case.url) in r.stderr


# Signatures carried in the path (Aliyun type B/C, Tencent type B/C, a JWT or an opaque token as a path
# element): {t} a time stamp, {h} a hash/token; both hidden. {name} and the file name are shown.
PATH_SHAPES = [
    "http://{host}/{h}/{t}/live/{name}.m3u8",  # Aliyun C: /md5/timestamp-hex/
    "http://{host}/{t}/{h}/live/{name}.flv",  # Aliyun/Tencent B: /YYYYMMDDHHMM/md5/
    "https://{host}/live/{name}/{h}/{t}/seg-00042.ts",
    "https://{host}/hls/{h}/{name}/index.m3u8",  # a token alone
]


def _path_token(rng: random.Random) -> str:
    kind = rng.choice(["md5", "sha256", "jwt", "b64"])
    if kind == "md5":
        return "".join(rng.choices("0123456789abcdef", k=32))
    if kind == "sha256":
        return "".join(rng.choices("0123456789ABCDEF", k=64))
    if kind == "jwt":
        part = lambda k: "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=k))  # noqa: E731
        return f"eyJ{part(20)}.{part(30)}.{part(43)}"
    core = "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=rng.randint(24, 44)))
    return "aZ9" + core  # mixed case and digits, as base64url tokens are


def _path_cases(n: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        template = PATH_SHAPES[i % len(PATH_SHAPES)]
        minute = f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}"
        stamp = rng.choice([f"{rng.randint(0x60000000, 0x7FFFFFFF):08x}", str(rng.randint(1_600_000_000, 1_999_999_999)), minute])
        fields = {"host": rng.choice(HOSTS), "h": _path_token(rng), "t": stamp, "name": "room" + str(rng.randint(1, 999))}
        url = template.format(**fields)
        secrets = (fields["h"],) + ((stamp,) if "{t}" in template else ())
        out.append(Case(url, secrets, (), (fields["host"], fields["name"], url.rsplit("/", 1)[1])))
    return out


PATH_CASES = _path_cases(64, seed=25)


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: c.url[:48])
def test_signatures_in_the_path_are_masked_with_their_time_stamps(case: Case) -> None:
    shown = mask_url(case.url)
    _assert_hidden(shown, case)
    assert all(k in shown for k in case.kept), shown
    assert mask_url(shown) == shown
    text = f"[hls @ 0x55d5c0a1b2c0] Opening '{case.url}' for reading"
    _assert_hidden(mask_text(text), case)


@pytest.mark.parametrize(
    "url",
    [
        "http://h/hls/2026/12/03/seg-00042.ts",  # dates and numbers
        "http://h/vod/1733212345/index.m3u8",  # a time stamp with no token beside it
        "http://h/live/room123/index.m3u8",
        "https://h/v1/streams/show-2026-12-03_main/playlist.m3u8",
        "http://h/live/8b1a9953c4611296a827abf8c47804d7.m3u8",  # a hash-named file keeps its extension: a name
        "https://h/live/concert_night_stage_left_camera/index.m3u8",  # long, but no digits or upper case
    ],
)
def test_ordinary_paths_are_shown_as_they_are(url: str) -> None:
    assert mask_url(url) == url
