"""A stand-in daemon for the webhook kill -9 test: the real store, bus and outbound wiring
(:class:`~streamwatch.outbound.wiring.Integrations`), publishing COUNT alerts then idling until killed.

Usage: python outbound_proc.py CONFIG_TOML COUNT READY_FILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from evserver import alert

from streamwatch.config import load_settings
from streamwatch.events.bus import EventBus
from streamwatch.events.store import EventStore
from streamwatch.outbound.metrics import OutboundMetrics
from streamwatch.outbound.wiring import Integrations
from streamwatch.server.metrics import Metrics


async def main(config: Path, count: int, ready: Path) -> None:
    s = load_settings(config)
    store = EventStore(s.data_dir)
    bus = EventBus(store)
    await bus.start()
    out = Integrations(
        s,
        store,
        bus,
        OutboundMetrics(Metrics().registry),
        rule_of=lambda _s, _r: None,
        streams=lambda: ["s1"],
        offsets=lambda _s: 0.0,
        server_url=lambda: "http://127.0.0.1:9",
    )
    await out.start()
    ids = [(await bus.publish(alert(offset=float(i), message=f"planted {i}"))).id for i in range(count)]
    await asyncio.to_thread(ready.write_text, " ".join(map(str, ids)))
    await asyncio.sleep(600)  # until killed


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
