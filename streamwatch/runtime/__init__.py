"""Per-stream work and the set of streams a process runs (the single box and a cluster worker alike)."""
