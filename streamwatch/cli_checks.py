"""Checks behind CLI commands: what ``check-config`` verifies beyond the schema (the encoder folder),
and where ``analyze`` writes its report in which format. Raise ConfigError with what to do instead."""

from __future__ import annotations

from pathlib import Path

from streamwatch.config import EncoderConfig, load_toml_model
from streamwatch.errors import ConfigError, StreamwatchError

REPORT_SUFFIXES = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv"}


def report_target(output: Path | None, fmt: str | None, recording: Path) -> tuple[Path, str]:
    """Where ``analyze`` writes its report and in which format: ``--format``, else the extension of
    ``-o``; without ``-o``, ``RECORDING-report.FORMAT`` beside the recording. ConfigError when unclear."""
    if output is None:
        fmt = fmt or "html"
        return recording.with_name(f"{recording.stem}-report.{fmt}"), fmt
    by_suffix = REPORT_SUFFIXES.get(output.suffix.lower())
    if fmt and by_suffix and fmt != by_suffix:
        raise ConfigError(f"-o {output} says {by_suffix} but --format says {fmt}: make them agree")
    if not fmt and not by_suffix:
        raise ConfigError(f"cannot tell the report format from {output.name!r}: name it .html, .json or .csv, or give --format")
    return output, fmt or by_suffix or "html"


def check_encoder(cfg: EncoderConfig) -> str:
    """The encoder folder (manifest, every file's SHA-256, the variant) and its labels file; ConfigError if wrong."""
    from streamwatch.analysis.encoder import LabelsFile, load_manifest

    if cfg.path is None:
        return "encoder: off"
    try:
        manifest = load_manifest(cfg.path)
    except StreamwatchError as e:
        raise ConfigError(f"analysis.encoder.path: {e} (export one with `streamwatch export-encoder SOURCE -o {cfg.path}`)") from e
    if cfg.variant and cfg.variant not in manifest.variants:
        have = ", ".join(manifest.variants) or "none"
        raise ConfigError(f"analysis.encoder.variant: encoder {manifest.name} has no {cfg.variant!r} variant (has: {have})")
    labels = load_toml_model(cfg.labels, LabelsFile, "labels file") if cfg.labels else None
    n = f", {len(labels.label)} labels" if labels else ""
    return f"encoder {manifest.name}{f' ({cfg.variant})' if cfg.variant else ''}: OK{n}"
