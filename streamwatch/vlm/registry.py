"""The model registry (``models/registry.json``): which models exist, and which serve each role.

Validated at load: every error names the file and the JSON path (``models[2].endpoint``). The model
``local`` (no model, templates from the local evidence) always exists and is the natural end of a
failover chain.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamwatch.errors import RegistryError
from streamwatch.vlm.images import ImageLimits

LOCAL = "local"


class Capability(enum.Enum):
    COMPLIANCE = "compliance"
    REPLY = "reply"
    QA = "qa"
    SUMMARY = "summary"  # the post-show summary post (streamwatch summary)


ServerFamily = Literal["vllm", "sglang", "ollama", "llamacpp", "transformers", "lmdeploy", "openai", "other"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64, description="Registry id (in events and switch commands).")]
    backend: Annotated[Literal["openai", "hf", "local"], Field(description="openai (HTTP), hf (in-process transformers) or local.")]
    endpoint: Annotated[str | None, Field(description="openai: base URL of the OpenAI-compatible API (…/v1).")] = None
    model_name: Annotated[str | None, Field(description="openai: the server's model name; hf: unused.")] = None
    path: Annotated[str | None, Field(description="hf: local folder or hub id of the checkpoint.")] = None
    api_key_env: Annotated[str | None, Field(description="Environment variable holding the API key (never logged).")] = None
    params_b: Annotated[float | None, Field(gt=0, description="Parameter count, billions.")] = None
    architecture: Annotated[str, Field(description="Model family, e.g. qwen3_vl, qwen2_5_vl, glm4v.")] = ""
    mode: Annotated[Literal["instruct", "thinking"], Field(description="Thinking models have their reasoning stripped.")] = "instruct"
    capabilities: Annotated[list[Capability], Field(min_length=1, description="Roles it may serve: compliance, reply, qa.")]
    context_tokens: Annotated[int, Field(ge=256, description="Context window, tokens.")] = 8192
    max_output_tokens: Annotated[int, Field(ge=16, description="Most tokens one answer may use.")] = 512
    priority: Annotated[int, Field(description="Higher first when a role lists no explicit chain.")] = 0
    concurrency: Annotated[int, Field(ge=1, le=256, description="Requests in flight at once to this backend.")] = 4
    timeout_s: Annotated[float, Field(gt=0, description="Seconds one request may take.")] = 30.0
    json_schema: Annotated[bool, Field(description="Send response_format with a JSON schema (vLLM/SGLang/OpenAI do).")] = True
    image_side: Annotated[int, Field(ge=64, le=4096, description="Long side of images sent to it (tokens scale with pixels).")] = 512
    image_min_side: Annotated[int, Field(ge=1, le=1024, description="Shortest image side the server accepts, px (Qwen/GLM: 28-32).")] = 32
    image_patch: Annotated[int, Field(ge=1, le=256, description="Image sides are multiples of this, px (Qwen3-VL 32, Qwen2.5-VL 28).")] = 32
    image_max_tokens: Annotated[int, Field(ge=1, description="Image tokens per request, all images: (W/patch)·(H/patch) each.")] = 1280
    image_max_tiles: Annotated[int, Field(ge=1, le=16, description="Images one long picture may be cut into.")] = 4
    image_tile_aspect: Annotated[float, Field(ge=1, description="Pictures longer than image_side and than this ratio are tiled.")] = 3.0
    image_max_aspect: Annotated[float, Field(ge=1, description="Longest aspect ratio accepted (Qwen: 200); beyond: padded.")] = 200.0
    image_max_count: Annotated[
        int | None,
        Field(ge=1, le=64, description="Images one request may carry (vLLM --limit-mm-per-prompt); unset: learned from a refusal."),
    ] = None
    server: Annotated[
        ServerFamily,
        Field(
            description="openai: the server family, for switching thinking per request: vllm/sglang send "
            "chat_template_kwargs.enable_thinking, ollama reasoning_effort 'none', llamacpp nothing (its --reasoning-format flag)."
        ),
    ] = "other"
    think: Annotated[
        list[Capability] | None,
        Field(
            description="Thinking models: the roles it reasons for; thinking is switched off for the others. Unset: the server's default."
        ),
    ] = None
    device: Annotated[Literal["auto", "cpu", "cuda"], Field(description="hf: where the model runs.")] = "auto"
    max_batch: Annotated[int, Field(ge=1, le=64, description="hf: requests generated together in one batch.")] = 4

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelSpec:
        if self.backend == "openai" and not (self.endpoint and self.model_name):
            raise ValueError("an openai backend needs endpoint and model_name")
        if self.backend == "openai" and not self.endpoint.startswith(("http://", "https://")):  # type: ignore[union-attr]
            raise ValueError(f"endpoint must be an http(s) URL, not {self.endpoint!r}")
        if self.backend == "hf" and not self.path:
            raise ValueError("an hf backend needs path (local folder or hub id)")
        problems = self.image_limits.problems()
        if problems:
            raise ValueError("image limits cannot be met: " + "; ".join(problems))
        return self

    @property
    def image_limits(self) -> ImageLimits:
        """The image constraints of this model (:mod:`streamwatch.vlm.images`)."""
        return ImageLimits(
            self.image_side,
            self.image_min_side,
            self.image_patch,
            self.image_max_tokens,
            self.image_max_tiles,
            self.image_tile_aspect,
            self.image_max_aspect,
        )

    def serves(self, role: Capability) -> bool:
        return role in self.capabilities

    def thinks(self, role: Capability | None) -> bool | None:
        """Whether the model should reason for ``role`` (None: leave it to the server)."""
        if self.mode != "thinking" or self.think is None or role is None:
            return None
        return role in self.think


class RegistrySpec(_Strict):
    version: Literal[1] = 1
    models: Annotated[list[ModelSpec], Field(description="Known models.")] = []
    roles: Annotated[dict[Capability, list[str]], Field(description="Role → failover chain of model ids, best first.")] = {}


LOCAL_SPEC = ModelSpec(id=LOCAL, backend="local", capabilities=list(Capability), priority=-1_000_000)


class Registry:
    """Validated models by id (``local`` always present) and each role's failover chain."""

    def __init__(self, spec: RegistrySpec, source: str = "registry") -> None:
        self.source = source
        self.models: dict[str, ModelSpec] = {LOCAL: LOCAL_SPEC}
        for i, m in enumerate(spec.models):
            if m.id in self.models:
                raise RegistryError(
                    f"{source}: models[{i}].id: model id {m.id!r} is defined twice" + (" (local is built in)" if m.id == LOCAL else "")
                )
            self.models[m.id] = m
        self.roles: dict[Capability, list[str]] = {}
        for role in Capability:
            chain = spec.roles.get(role)
            if chain is None:  # no explicit chain: every capable model by priority, then local
                chain = [m.id for m in sorted(self.models.values(), key=lambda m: -m.priority) if m.serves(role)]
            self.roles[role] = self.check_chain(role, chain, f"roles.{role.value}")

    def check_chain(self, role: Capability, chain: list[str], where: str) -> list[str]:
        if not chain:
            raise RegistryError(f'{self.source}: {where}: the chain is empty (use ["local"] for no model)')
        for i, mid in enumerate(chain):
            self.get(mid, f"{where}[{i}]")
            if not self.models[mid].serves(role):
                raise RegistryError(f"{self.source}: {where}[{i}]: model {mid!r} does not have the {role.value!r} capability")
            if chain.index(mid) != i:
                raise RegistryError(f"{self.source}: {where}[{i}]: model {mid!r} appears twice in the chain")
        return list(chain)

    def get(self, model_id: str, where: str = "model") -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise RegistryError(f"{self.source}: {where}: unknown model {model_id!r} (known: {known})") from None


def load_registry(path: Path | str, roles: dict[str, list[str]] | None = None) -> Registry:
    """Read and validate a registry file; ``roles`` (from the config) replace the file's chains."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RegistryError(f"cannot read model registry {path}: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: not valid JSON: {e}") from e
    if isinstance(raw, dict) and roles:
        raw = {**raw, "roles": {**(raw.get("roles") or {}), **roles}}
    try:
        spec = RegistrySpec.model_validate(raw)
    except ValidationError as e:
        raise RegistryError(_describe(e, str(path))) from e
    return Registry(spec, str(path))


def _describe(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where or '(top level)'}: {msg}")
    return f"invalid model registry {source}:\n" + "\n".join(lines)
