"""streamwatch: watch live streams, raise compliance alerts and answer the audience in real time."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
