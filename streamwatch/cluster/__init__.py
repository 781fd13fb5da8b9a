"""Cluster mode on NATS JetStream: the control plane (connection, names, assignment, leases,
desired streams, membership and the per-stream state a new owner carries on).

Each module is small and typed; only these modules import ``nats`` (the single box never does).
"""
