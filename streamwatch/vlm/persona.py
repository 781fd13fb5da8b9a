"""Personas (``models/personas/<id>.toml``): who replies to the audience, and how. Validated at load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from streamwatch.config import load_toml_model


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9_-]+$", description="Persona id (file name without .toml).")]
    name: Annotated[str, Field(min_length=1, description="The idol's name as the audience knows it.")]
    personality: Annotated[str, Field(description="A sentence on who she is.")] = ""
    tone: Annotated[str, Field(description="How she talks.")] = ""
    language: Annotated[str, Field(description="Reply language (BCP 47, e.g. zh, en, ja).")] = "zh"
    reply_length: Annotated[int, Field(ge=5, le=500, description="Target reply length in characters.")] = 40
    emoji: Annotated[bool, Field(description="Whether replies may use emoji.")] = True
    catchphrases: Annotated[list[str], Field(description="Phrases she often says.")] = []
    likes: Annotated[list[str], Field(description="Things she likes (for warm, specific replies).")] = []
    taboo: Annotated[list[str], Field(description="Topics she never talks about.")] = []
    examples: Annotated[list[str], Field(description="Example replies (style reference).")] = []


def load_persona(path: Path | str) -> Persona:
    return load_toml_model(Path(path), Persona, "persona")
