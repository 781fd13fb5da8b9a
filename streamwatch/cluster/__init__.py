"""Cluster mode on NATS JetStream: control plane (leases, desired set) and data plane (event log, follower, VLM admission)."""
