"""``streamwatch summary``: the post-ready summary of a show (kept apart so cli.py stays small)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_summary_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("summary", help="write a post-ready summary (图文摘要: frames, post text, fan-art collage) of a show")
    s.add_argument("stream", help="stream id")
    s.add_argument("--data", type=Path, help="data directory (default: data_dir from the config, ./streamwatch-data)")
    s.add_argument("-c", "--config", type=Path, help="TOML config file (data_dir, policy, [vlm] roles and persona)")
    s.add_argument("-o", "--output", type=Path, help="output folder (default STREAM-summary)")
    s.add_argument("--frames", type=int, default=6, help="frames to pick (default 6)")
    s.add_argument("--persona", action="store_true", help="write the post in the persona's voice (vlm.persona)")
    s.add_argument("--slideshow", action="store_true", help="also write slideshow.mp4 of the fan art")
    s.add_argument("--template", action="store_true", help="no model: the local template only")
    s.set_defaults(func=cmd_summary)


def cmd_summary(a: argparse.Namespace) -> int:
    import asyncio

    from streamwatch.analysis.policy import load_policy
    from streamwatch.config import load_settings
    from streamwatch.errors import ConfigError
    from streamwatch.events.store import EventStore
    from streamwatch.report.post import write_summary
    from streamwatch.vlm.persona import load_persona
    from streamwatch.vlm.registry import load_registry
    from streamwatch.vlm.router import ModelRouter
    from streamwatch.vlm.service import VLMService

    if a.frames < 1 or a.frames > 24:
        raise ConfigError(f"--frames must be between 1 and 24, got {a.frames}")
    over = {"data_dir": a.data} if a.data else {}
    settings = load_settings(a.config, over)
    if not (settings.data_dir / "events.sqlite3").is_file():
        raise ConfigError(f"no event store in {settings.data_dir} (run the daemon or `streamwatch analyze` with --data first)")
    out: Path = a.output or Path(f"{a.stream}-summary")
    policy = load_policy(settings.analysis.policy)
    persona = load_persona(settings.vlm.persona) if a.persona else None

    async def go() -> None:
        router = None
        service = None
        if not a.template:
            router = ModelRouter(load_registry(settings.vlm.registry, settings.vlm.roles))
            router.start()
            service = VLMService(router)
        store = EventStore(settings.data_dir, retention_days=None, retention_mb=None)
        try:
            result = await write_summary(
                store, a.stream, out, service=service, policy=policy, persona=persona, frames=a.frames, with_slideshow=a.slideshow
            )
        finally:
            store.close()
            if router is not None:
                await router.close()
        print(result.post.text())
        left = (
            f" ({result.excluded} frames left out: at or near an alert, or in a black / frozen / outage period)" if result.excluded else ""
        )
        print(
            f"\n{len(result.frames)} frames{left}, text by {result.post.model}, "
            f"{_collage(result.replied) if result.collage else 'no fan images'}: {result.out.resolve()}/"
        )

    asyncio.run(go())
    return 0


def _collage(n: int) -> str:
    return f"collage of {n} fan image{'' if n == 1 else 's'}"
