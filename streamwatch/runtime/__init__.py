"""Per-stream work and the set of streams a process runs."""
