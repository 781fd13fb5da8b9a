"""`run` fails fast and says why (issues 24, 25): a source streamwatch cannot read is refused before
models load or a port is bound, in one line, exit 2, with the same message from every command; a run
whose every stream failed exits 1; a run with nothing to watch says what to add; config typos get a
"did you mean" and the environment variable that holds them. Run as a user would: real subprocesses
of the CLI, real media files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import Clip

from streamwatch.config import IngestConfig, SamplingConfig, ServerConfig, load_settings
from streamwatch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# (source, what the one line must say): unknown schemes (typos and others), RIST until its ingest
# exists, SRT/UDP/RTP addresses without a port, Windows paths of several shapes, a URL whose slash was lost
REFUSED = [
    ("rtmpp://x", "unsupported source scheme 'rtmpp'"),
    ("rtmpp:/x", "unsupported source scheme 'rtmpp'"),
    ("htps://cdn.example/live.m3u8", "did you mean http"),
    ("ftp://user:pw@host/show.mp4", "unsupported source scheme 'ftp'"),
    ("rist://127.0.0.1:5000", "RIST sources are not supported yet"),
    ("srt://127.0.0.1?mode=caller", "has no port or a bad one"),
    ("srt://host:99999", "has no port or a bad one"),
    ("udp://239.0.0.1", "has no port or a bad one"),
    ("rtp://@:notaport", "has no port or a bad one"),
    ("C:\\Users\\主播\\Videos\\show 1.mp4", "is a Windows path"),
    ("D:/shows/2026-12-01.flv", "is a Windows path"),
    ("\\\\nas\\share\\show.mp4", "is a Windows path"),
]


def sw(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "streamwatch", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0].startswith("streamwatch: error: ")
    return lines[0]


@pytest.mark.parametrize(("source", "why"), REFUSED)
def test_run_refuses_a_source_it_cannot_read_before_anything_starts(source: str, why: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = sw("run", "--source", source, "--port", "0", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    line = one_line(r)
    assert why in line and "stream main" in line and "pw@" not in line
    if "not supported yet" in why or "scheme" in why:
        assert "rtmp(s)://" in line and "rtsp(s)://" in line  # names what is supported
    assert time.monotonic() - t0 < 20  # no model loaded, no retry
    assert not list(tmp_path.iterdir())  # no streamwatch-data/ left behind


def test_every_command_gives_the_same_line_for_the_same_bad_source(tmp_path: Path) -> None:
    for source, why in (REFUSED[0], REFUSED[4], REFUSED[8]):
        cfg = tmp_path / "sw.toml"
        cfg.write_text(f"[[streams]]\nid = \"room\"\nsource = '{source}'\n", encoding="utf-8")
        lines = {}
        c = str(cfg)
        commands = (["run", "--source", source], ["run", "-c", c], ["check-config", c], ["probe", source], ["analyze", source])
        for cmd in commands:
            r = sw(*cmd, cwd=tmp_path)
            assert r.returncode == 2, (cmd, r.stderr[-2000:])
            lines[cmd[0] + cmd[1]] = one_line(r).replace("stream main: ", "").replace("stream room: ", "")
        assert len(set(lines.values())) == 1, lines
        assert why in next(iter(lines.values()))
        assert "stream room" in sw("run", "-c", str(cfg), cwd=tmp_path).stderr  # the config's stream is named


def test_a_missing_file_is_refused_before_models_load(tmp_path: Path) -> None:
    folder = tmp_path / "a folder.mp4"
    folder.mkdir()
    cases = [
        ("nosuch.mp4", "cannot open nosuch.mp4: no such file"),
        (str(tmp_path / "主播" / "show 1.flv"), "show 1.flv: no such file"),
        ("file://" + quote(str(tmp_path / "主播" / "show 1.mp4")), f"{tmp_path}/主播/show 1.mp4: no such file"),  # decoded
        (str(folder), "it is a folder"),
    ]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for source, why in cases:
        t0 = time.monotonic()
        r = sw("run", "--source", source, "--port", "0", cwd=cwd)
        assert r.returncode == 2 and why in one_line(r), r.stderr[-2000:]
        assert time.monotonic() - t0 < 20
        r = sw("probe", source, cwd=cwd)
        assert r.returncode == 2 and why in one_line(r)
    assert not list(cwd.iterdir())


def test_a_percent_encoded_file_url_is_decoded(short_clip: Clip, tmp_path: Path) -> None:
    for name in ("主播 直播", "show 1", "a%b"):
        path = tmp_path / name / "录像 1.flv"
        path.parent.mkdir()
        shutil.copy(short_clip.path, path)
        for url in ("file://" + quote(str(path)), "file://localhost" + quote(str(path))):
            r = sw("probe", url, cwd=tmp_path)
            assert r.returncode == 0, r.stderr[-2000:]
            assert "320x180" in r.stdout


def test_a_run_whose_every_stream_failed_exits_non_zero(short_clip: Clip, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(50_000))  # found on disk, not a video: fails when opened
    r = sw("run", "--source", str(junk), "--port", "0", "--data", str(tmp_path / "d1"), cwd=tmp_path, timeout=180)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "every stream failed (main)" in r.stderr.strip().splitlines()[-1]

    cfg = tmp_path / "two.toml"  # two streams, a file that is not a video and an RTMP server that is not there
    cfg.write_text(
        "[ingest]\nmax_retries = 0\nopen_timeout_s = 1\n"
        f'[[streams]]\nid = "junk"\nsource = \'{junk}\'\n[[streams]]\nid = "gone"\nsource = "rtmp://127.0.0.1:9/live/k"\n'
    )
    r = sw("run", "-c", str(cfg), "--port", "0", "--data", str(tmp_path / "d2"), cwd=tmp_path, timeout=180)
    assert r.returncode == 1 and "every stream failed (gone, junk)" in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("Traceback") == 0

    # one of them watched to its end: the run did its work
    cfg.write_text(f"[[streams]]\nid = \"junk\"\nsource = '{junk}'\n[[streams]]\nid = \"good\"\nsource = '{short_clip.path}'\n")
    r = sw("run", "-c", str(cfg), "--port", "0", "--data", str(tmp_path / "d3"), cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "every stream failed" not in r.stderr


def test_run_with_nothing_to_watch_says_what_to_add_and_writes_nothing(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for extra in ([], ["--token", "overlay:overlay-secret-1"], ["--token", "moderator:moderator-secret-1"]):
        r = sw("run", "--port", "0", *extra, cwd=cwd)
        assert r.returncode == 2, r.stderr[-2000:]
        line = one_line(r)
        assert "nothing to watch" in line and "--source" in line and "--token admin:" in line and "streams add" in line
    assert not list(cwd.iterdir()), "a refused run left data behind"

    # an admin token can add streams while it runs: it starts, and says how with the token it has
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["run", "--port", "0", "--token", "admin:admin-secret-1", "--data", str(tmp_path / "d")]
    p = subprocess.Popen([sys.executable, "-m", "streamwatch", *args], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        seen = ""
        deadline = time.monotonic() + 120
        while "serving" not in seen and time.monotonic() < deadline and p.poll() is None:
            seen += p.stderr.readline()
        assert "serving" in seen, seen
        assert "streams add ID SOURCE" in seen and "(token admin)" in seen
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0


def test_check_config_says_what_an_init_config_lacks(tmp_path: Path) -> None:
    r = sw("init", cwd=tmp_path)
    assert r.returncode == 0
    r = sw("check-config", "streamwatch.toml", cwd=tmp_path)
    assert r.returncode == 0 and "OK (1 stream)" in r.stdout
    assert "warning: no tokens" in r.stderr and "[[server.tokens]] in streamwatch.toml" in r.stderr and "--token ROLE:SECRET" in r.stderr
    cfg = tmp_path / "empty.toml"
    cfg.write_text('[[server.tokens]]\nname = "wall"\nrole = "overlay"\nsecret = "overlay-secret-1"\n')
    r = sw("check-config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0 and "nothing to watch" in r.stderr and "no tokens" not in r.stderr


def _typos(word: str) -> list[str]:
    """A dropped letter, two letters swapped, a doubled letter (inside the word)."""
    i = len(word) // 2
    return [word[:i] + word[i + 1 :], word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :], word[:i] + word[i] + word[i:]]


@pytest.mark.parametrize(("section", "model"), [("ingest", IngestConfig), ("sampling", SamplingConfig), ("server", ServerConfig)])
def test_a_misspelt_key_gets_did_you_mean_with_its_line_or_its_variable(
    section: str, model: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in model.model_fields if len(k) >= 8][:4]:
        for typo in _typos(key):
            if typo in model.model_fields:
                continue
            cfg = tmp_path / "c.toml"
            cfg.write_text(f'log_level = "INFO"\n\n[{section}]\n{typo} = 1\n')
            with pytest.raises(ConfigError) as e:
                load_settings(cfg)
            assert f"{section}.{typo} (line 4): Extra inputs are not permitted (did you mean {key}?)" in str(e.value)
            if "__" in typo:  # (a doubled underscore is the variables' nesting delimiter)
                continue
            var = f"STREAMWATCH_{section.upper()}__{typo.upper()}"
            monkeypatch.setenv(var, "1")
            with pytest.raises(ConfigError) as e:
                load_settings(None)
            msg = str(e.value)
            assert f"from the environment variable {var}" in msg and f"did you mean STREAMWATCH_{section.upper()}__{key.upper()}?" in msg
            assert "in the environment:" in msg and "c.toml" not in msg
            monkeypatch.delenv(var)


def test_an_env_typo_names_the_variable_not_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "good.toml"
    cfg.write_text('[sampling]\nevery_s = 2\n[[streams]]\nid = "main"\nsource = "rtmp://127.0.0.1/live/show"\n')
    r = sw("check-config", str(cfg), cwd=tmp_path, env={"STREAMWATCH_INGEST__READ_TIMOUT_S": "3"})
    assert r.returncode == 1
    assert "invalid configuration in the environment:" in r.stderr and "good.toml" not in r.stderr
    assert "STREAMWATCH_INGEST__READ_TIMOUT_S" in r.stderr and "did you mean STREAMWATCH_INGEST__READ_TIMEOUT_S?" in r.stderr


def test_analyze_refuses_a_live_source_and_names_a_bad_one_as_probe_does(tmp_path: Path) -> None:
    r = sw("analyze", "rtmp://127.0.0.1/live/show", cwd=tmp_path)
    assert r.returncode == 1 and "is a live source" in r.stderr and "run --source" in r.stderr and "Traceback" not in r.stderr
    r = sw("analyze", "rtmpp://x", cwd=tmp_path)
    assert r.returncode == 2 and "'rtmpp'" in one_line(r) and "rtmpp:/x" not in r.stderr


@pytest.mark.parametrize("source", ["rtmpp://x", "rist://127.0.0.1:9000", "udp://127.0.0.1", "C:\\Users\\主播\\a.mp4"])
def test_a_running_stream_whose_source_is_refused_is_stopped_not_retried(source: str, tmp_path: Path) -> None:
    """Past the CLI's check (a desired set written by hand, a library caller): one stopped event, no restart loop."""
    import asyncio

    from streamwatch.app import Daemon
    from streamwatch.events.model import HealthEvent, HealthKind, StreamState
    from streamwatch.events.store import EventStore

    data = tmp_path / "d"
    over = {"data_dir": data, "streams": [{"id": "show", "source": source}], "analysis": {"analyzers": ["qr"], "threads": 1}}
    daemon = Daemon(load_settings(None, over), serve=False)
    asyncio.run(asyncio.wait_for(daemon.run(), 60))  # the daemon ends: nothing left to watch
    assert daemon.all_failed() == ["show"]
    assert daemon.metrics.stream_restarts.labels("stopped")._value.get() == 1
    assert daemon.metrics.stream_restarts.labels("restarted")._value.get() == 0
    store = EventStore(data)
    try:
        states = [e for e in store.events("show") if isinstance(e, HealthEvent) and e.kind is HealthKind.STATE]
    finally:
        store.close()
    assert [e.state for e in states] == [StreamState.STOPPED]
    assert "not retried: fix the source" in (states[0].reason or "")
