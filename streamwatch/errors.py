"""Exceptions raised by streamwatch.

Every error streamwatch raises derives from :class:`StreamwatchError`, with one subclass per
pipeline stage. Where a matching builtin exists the error inherits it too (as PyAV does), so callers
can catch either way: ``except SourceTimeout`` or ``except TimeoutError``.

Library errors (PyAV, OpenCV, pydantic, …) are wrapped at the stage boundary with ``raise … from e``
and never carry credentials: URLs in messages are always redacted (an :class:`IngestError` masks
every URL in its message itself, see :mod:`streamwatch.redact`, whatever the call site passed).

Tree::

    StreamwatchError
    ├── ConfigError (ValueError)              bad config file, env var or CLI option
    │   ├── BadSource                         a source streamwatch cannot read (scheme, host, path, missing file)
    │   ├── PolicyError                       bad policy file or word list (file + line)
    │   ├── DuplicateStream                   a stream added at run time whose id is already watched
    │   └── UnknownStream (KeyError)          a stream id that is not in the desired set
    ├── IngestError                           anything about getting frames out of a source
    │   ├── SourceOpenError (ConnectionError) could not open / connect (after retries, if any)
    │   ├── SourceTimeout (TimeoutError)      no data within the read timeout
    │   ├── SourceEnded                       a live source ended cleanly (treated as a disconnect)
    │   ├── SourceCorrupt (ValueError)        undecodable data in a file (frames before it were delivered)
    │   └── NoVideoStream (ValueError)        the source has no video stream
    ├── SamplingError                         bad sampling input (e.g. an empty image)
    ├── AnalysisError                         detectors / encoder / policy
    │   └── ModelLoadError                    a model file missing, unreadable or unexpected
    ├── VLMError                              vision-language backends
    │   ├── RegistryError (ConfigError)       bad model registry (models/registry.json) or unknown model
    │   ├── VLMUnavailable (ConnectionError)  backend unreachable, HTTP error, model not loadable
    │   │   └── VLMServerError                the backend answered this request with an error (HTTP 5xx,
    │   │                                     failed generation): the model, or this input — the router asks
    │   ├── VLMTimeout (TimeoutError)         no answer within the backend's timeout
    │   ├── VLMOutputError (ValueError)       an answer that cannot be used (bad JSON, wrong schema, empty)
    │   │   └── VLMTruncated                  an answer cut off (token budget, reasoning never ended): never a judgment
    │   └── VLMInputError (ValueError)        this request's input was refused (HTTP 400/413/422, an image
    │                                         the model cannot take, or an error for this request while the
    │                                         model answers others): reported against the request only
    ├── EventsError                           event store and bus
    │   └── StorageError (OSError)            the data folder takes no writes (disk full, quota, read-only):
    │                                         a ``storage`` health event; the watch goes on
    ├── ServerError                           WebSocket / HTTP server
    ├── OutboundError                         webhooks, MQTT: what leaves the process for other systems
    │   └── DeliveryFailed (ConnectionError)  a receiver was unreachable, too slow, or answered non-2xx
    ├── ActionError                           actions on the stream (cut, warn, HTTP actions)
    │   └── ActionRefused (ValueError)        an action that cannot run (no action for the alert, done already)
    └── ClusterError                          cluster mode: NATS / JetStream
        └── LeaseLost                         a stream lease could not be renewed: the stream stops at once
"""

from __future__ import annotations


class StreamwatchError(Exception):
    """Root of every error streamwatch raises."""


class ConfigError(StreamwatchError, ValueError):
    """A config file, environment variable or command-line option is invalid."""


class BadSource(ConfigError):
    """A source streamwatch cannot read: an unsupported scheme, no host, a Windows path, a missing file.

    Refused before anything starts (the CLI exits 2); retrying cannot help, so a running stream whose
    source is refused is stopped, not restarted."""


class DuplicateStream(ConfigError):
    """A stream added at run time has the id of a stream already in the desired set."""


class UnknownStream(ConfigError, KeyError):
    """A stream id (to remove, or to look up) that is not in the desired set."""

    def __str__(self) -> str:  # KeyError quotes its argument; the message is for people
        return str(self.args[0]) if self.args else ""


class IngestError(StreamwatchError):
    """Getting frames out of a source failed. URLs in the message are masked (FFmpeg quotes them)."""

    def __init__(self, *args: object) -> None:
        from streamwatch.redact import mask_text

        super().__init__(*(mask_text(a) if isinstance(a, str) else a for a in args))


class SourceOpenError(IngestError, ConnectionError):
    """The source could not be opened or connected to."""


class SourceTimeout(IngestError, TimeoutError):
    """The source sent no data within the read timeout."""


class SourceEnded(IngestError):
    """A live source ended cleanly (for live sources this counts as a disconnect)."""


class SourceCorrupt(IngestError, ValueError):
    """The source holds undecodable data; frames before the damage were delivered."""


class NoVideoStream(IngestError, ValueError):
    """The source has no video stream."""


class SamplingError(StreamwatchError):
    """A sampling stage got input it cannot use."""


class AnalysisError(StreamwatchError):
    """An analyzer, encoder or policy failed."""


class PolicyError(ConfigError):
    """A policy file or word list is invalid (names the file and line)."""


class ModelLoadError(AnalysisError):
    """A model file is missing, unreadable or not what the analyzer expects."""


class VLMError(StreamwatchError):
    """A vision-language backend failed."""


class RegistryError(VLMError, ConfigError):
    """The model registry is invalid, or names a model it does not define."""


class VLMUnavailable(VLMError, ConnectionError):
    """A backend could not be reached, answered with an HTTP error, or its model could not load."""


class VLMTimeout(VLMError, TimeoutError):
    """A backend did not answer within its timeout."""


class VLMOutputError(VLMError, ValueError):
    """A backend answered, but the answer cannot be used (malformed JSON, wrong schema, empty)."""


class VLMTruncated(VLMOutputError):
    """The answer was cut off (``finish_reason == "length"``, JSON or reasoning never closed).

    Never taken as a judgment: the router asks once more with a larger budget and thinking off, then
    fails over. ``partial`` is what came before the cut (for logs; never shown as an answer);
    ``result`` the backend's whole record of it (tokens, time), when it has one (benchmarks read it).
    """

    def __init__(self, message: str, partial: str = "", result: object = None) -> None:
        super().__init__(message)
        self.partial = partial
        self.result = result


class VLMServerError(VLMUnavailable):
    """The backend is up but answered this request with an error (HTTP 5xx, a failed generation).

    Either the model is failing or this input is one it cannot take; the router tells them apart by
    asking the model a known-good request (a failure then counts against the model's circuit breaker,
    a success turns this error into :class:`VLMInputError`).
    """


class VLMInputError(VLMError, ValueError):
    """The backend refused this request's input (HTTP 400/413/422, an image its processor rejects, or
    an error for this request while the model answers others).

    Reported against that request only: not retried, never counted against the model's circuit
    breaker, no failover down the chain.
    """


class EventsError(StreamwatchError):
    """The event store or bus failed."""


class StorageError(EventsError, OSError):
    """The data folder refused a write: the disk is full (ENOSPC, SQLite's "database or disk is full"),
    a quota is exceeded, or it is read-only. ``what`` names the writer (``database``: the SQLite event
    log, its frame index and sessions; ``files``: evidence images and thumbnails). Said as a ``storage``
    health event; the streams are watched on."""

    def __init__(self, message: str, what: str = "files") -> None:
        super().__init__(message)
        self.what = what

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ServerError(StreamwatchError):
    """The WebSocket/HTTP server failed."""


class OutboundError(StreamwatchError):
    """An integration (webhook outbox, MQTT publisher) failed."""


class DeliveryFailed(OutboundError, ConnectionError):
    """A webhook receiver was unreachable, did not answer within the timeout, or answered non-2xx."""


class ActionError(StreamwatchError):
    """An action on the stream failed: the origin server's API unreachable, refusing, or timing out."""


class ActionRefused(ActionError, ValueError):
    """An action that cannot run: its alert's rule has none, it already ran, or the show's switch is off."""


class ClusterError(StreamwatchError):
    """Cluster mode failed: NATS unreachable, a JetStream call refused, a lease lost."""


class LeaseLost(ClusterError):
    """A stream lease could not be renewed (expired, or taken by another worker): stop the stream now."""
