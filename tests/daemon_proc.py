"""A stand-in daemon for the kill -9 test: serves /ws and publishes an alert every few ms until killed.

Usage: python daemon_proc.py DATA_DIR PORT_FILE
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from evserver import alert, server_config

from streamwatch.events.bus import EventBus
from streamwatch.events.store import EventStore
from streamwatch.server import EventServer


async def main(data_dir: Path, port_file: Path) -> None:
    store = EventStore(data_dir)
    bus = EventBus(store)
    await bus.start()
    server = EventServer(server_config(), bus, streams=["s1"])
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(server.port))
    t0 = time.time()
    while True:
        await bus.publish(alert(offset=time.time() - t0, message="planted"))
        await asyncio.sleep(0.003)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
