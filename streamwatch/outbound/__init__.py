"""What streamwatch does beyond its own WebSocket: actions on the stream (cut, warn, HTTP actions)."""
