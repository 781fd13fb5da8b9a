#!/usr/bin/python3
"""A real RTSP server for the ingest tests (GStreamer's gst-rtsp-server, Debian's python3-gi).

Serves an H.264 MP4 file at rtsp://127.0.0.1:PORT/live, looping, with no re-encoding. Runs with the
system Python (/usr/bin/python3), which has the GObject bindings; prints "ready PORT" when listening.

    /usr/bin/python3 tests/rtsp_server.py FILE.mp4 PORT
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    path, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    # realtime-paced file playback; a new client gets the stream from the start
    factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )')
    factory.set_shared(True)
    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        sys.exit(1)
    print(f"ready {port}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
