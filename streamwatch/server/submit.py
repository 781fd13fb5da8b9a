"""Audience submissions and questions: validation and the typed hand-off to whoever answers them.

The server validates (base64, image type by magic bytes, dimensions read from the header *before*
decoding, so a decompression bomb is refused cheaply, then a real decode) and stores a thumbnail as
evidence; a :class:`Responder` (the VLM tier) turns a :class:`Submission` into a reply or a
rejection and a :class:`Question` into an answer.
"""

from __future__ import annotations

import base64
import binascii
import struct
import time
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from streamwatch.events.model import AnswerEvent, RejectedEvent, ReplyEvent
from streamwatch.server.protocol import ProtocolError

THUMB_SIDE = 320


@dataclass(frozen=True, slots=True)
class Submission:
    """An accepted audience image, ready for a responder."""

    id: str
    stream: str
    submitter: str  # token name
    user: str  # the fan's display name
    text: str  # the fan's message, if any
    image: bytes  # the original encoded image
    mime: str
    width: int
    height: int
    thumb: str  # evidence path of the stored thumbnail
    received_at: float


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    stream: str
    asker: str
    question: str
    ref: str | None
    received_at: float


def rejection(sub: Submission, reason: str, message: str, offset: float) -> RejectedEvent:
    """The ``rejected`` event for a submission (for the server and for responders)."""
    return RejectedEvent(
        stream=sub.stream,
        at=time.time(),
        offset=offset,
        submission=sub.id,
        submitter=sub.submitter,
        user=sub.user,
        reason=reason,
        message=message,
    )


@dataclass(frozen=True, slots=True)
class InferRequest:
    """``POST /vlm/infer``: an image (validated) and an optional question."""

    id: str
    image: bytes
    width: int
    height: int
    question: str  # "" = reply to the image in the persona
    stream: str  # whose policy screens the image ("" = the default policy)
    who: str  # token name


@dataclass(frozen=True, slots=True)
class InferResult:
    answer: str | None  # None when rejected
    model: str = ""
    rejected: str | None = None  # the rule (or reason) that refused the image
    message: str = ""


class Inferrer(Protocol):
    async def infer(self, request: InferRequest) -> InferResult: ...


@dataclass(frozen=True, slots=True)
class SwitchReport:
    role: str
    old: str
    new: str
    seconds: float


class ModelSwitcher(Protocol):
    """Switches the model of a VLM role (implemented by the daemon). Raises a StreamwatchError with a
    message for the client when the switch is refused or fails; the previous model then stays."""

    async def switch_model(self, role: str, model: str, by: str) -> SwitchReport: ...


class Forwarder(Protocol):
    """Hands fans' images and questions to whoever answers them elsewhere (a cluster gateway to its
    workers): the reply, rejection or answer then comes back through the event log, under one id."""

    async def allow(self, submitter: str, user: str) -> bool:
        """Whether the fan may send one more image now (counted if so)."""
        ...

    async def forward_submission(self, submission: Submission) -> RejectedEvent | None:
        """Queue an accepted image; a rejection to publish instead (a duplicate), or None. Raises StreamwatchError."""
        ...

    async def forward_question(self, question: Question) -> None:
        """Queue a question. Raises StreamwatchError."""
        ...


class Responder(Protocol):
    """Answers audience images and questions (implemented by the VLM tier)."""

    async def reply(self, submission: Submission) -> ReplyEvent | RejectedEvent: ...

    async def answer(self, question: Question) -> AnswerEvent: ...


def decode_base64(text: str, ref: str | None) -> bytes:
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("bad_image", "'image' is not valid base64", ref) from e


def sniff(data: bytes) -> tuple[str, int, int] | None:
    """(mime, width, height) from the header of a JPEG, PNG, GIF or WebP, or None if not one."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return "image/png", w, h
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return "image/gif", w, h
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return "image/webp", w, h
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return "image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return "image/webp", w & 0x3FFF, h & 0x3FFF
        return None
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return "image/jpeg", w, h
        i += 2 + length
    return None


def check_image(data: bytes, max_pixels: int, ref: str | None) -> tuple[str, int, int, np.ndarray]:
    """Validate an encoded image; returns (mime, width, height, decoded BGR pixels).

    Blocking (decodes): call it in an executor.
    """
    info = sniff(data)
    if info is None:
        raise ProtocolError("bad_image", "not a JPEG, PNG, GIF or WebP image", ref)
    mime, w, h = info
    if w <= 0 or h <= 0:
        raise ProtocolError("bad_image", "image has no pixels", ref)
    if w * h > max_pixels:
        raise ProtocolError("image_too_large", f"image is {w}×{h}; at most {max_pixels} pixels are accepted", ref)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or pixels.shape[0] != h or pixels.shape[1] != w:
        raise ProtocolError("bad_image", f"{mime} image could not be decoded (damaged or truncated)", ref)
    return mime, w, h, pixels


def thumbnail_jpeg(pixels: np.ndarray, side: int = THUMB_SIDE) -> bytes:
    h, w = pixels.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        pixels = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ProtocolError("bad_image", "could not make a thumbnail")
    return bytes(buf)
