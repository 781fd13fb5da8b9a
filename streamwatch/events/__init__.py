"""Event records shared by every stage (the store and bus come with the events issue)."""

from streamwatch.events.model import HealthEvent, HealthKind, StreamState

__all__ = ["HealthEvent", "HealthKind", "StreamState"]
