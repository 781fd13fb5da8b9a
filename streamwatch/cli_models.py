"""``streamwatch models check``: send every configured model a real request and print what its server
does (:mod:`streamwatch.vlm.check`). Kept apart so cli.py stays small."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from streamwatch.errors import ConfigError

if TYPE_CHECKING:
    from streamwatch.vlm.check import CheckResult
    from streamwatch.vlm.registry import ModelSpec


def add_check_parser(models: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = models.add_parser(
        "check", help="send each configured model a real request (image + JSON schema) and print what its server supports"
    )
    p.add_argument("-c", "--config", type=Path, help="TOML config file ([vlm] registry, roles)")
    p.add_argument("--model", action="append", help="only this registry id (repeatable; default: every openai model)")
    p.set_defaults(func=_cmd_models_check)


def _cmd_models_check(a: argparse.Namespace) -> int:
    from streamwatch.config import load_settings
    from streamwatch.vlm.check import render
    from streamwatch.vlm.registry import load_registry

    settings = load_settings(a.config)
    registry = load_registry(settings.vlm.registry, settings.vlm.roles)
    wanted = a.model or [m.id for m in registry.models.values() if m.backend == "openai"]
    specs = [registry.get(mid, "--model") for mid in wanted]
    if not specs:
        print("no model with an endpoint in the registry: nothing to check (the local templates need no server)")
        return 0
    if other := [s.id for s in specs if s.backend != "openai"]:
        raise ConfigError(f"models check sends HTTP requests; {', '.join(other)} run in-process (backend hf): leave them out")
    results = asyncio.run(_check_all(specs))
    print(render(results))
    failed = [r.model for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} answered" + (f"; failing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


async def _check_all(specs: list[ModelSpec]) -> list[CheckResult]:
    import httpx

    from streamwatch.vlm.check import check_model

    async with httpx.AsyncClient() as client:
        out = []
        for spec in specs:  # one after another: the latencies are the server's, not our queue's
            key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
            out.append(await check_model(spec, client, key))
        return out
