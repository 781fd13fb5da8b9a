"""``[actions]``: which origin server a cut goes to, the HTTP action templates, the dry run.

Pydantic only (no I/O): :mod:`streamwatch.config` nests it in :class:`~streamwatch.config.Settings`.
Secrets are never in the file: an HTTP action names the environment variable that holds its secret,
read when the action runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUILTIN = ("nginx", "srs")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NginxControlConfig(_Section):
    url: Annotated[
        str | None,
        Field(description="nginx-rtmp's control location (`location /control { rtmp_control all; }`), e.g. http://127.0.0.1:8080/control."),
    ] = None


class SrsConfig(_Section):
    url: Annotated[str | None, Field(description="SRS's HTTP API, e.g. http://127.0.0.1:1985 (a cut kicks the publishing client).")] = None


class HttpActionConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", description="Name a policy rule's `action` uses (not cut/warn/nginx/srs).")]
    method: Annotated[Literal["GET", "POST", "PUT", "PATCH", "DELETE"], Field(description="HTTP method.")] = "POST"
    url: Annotated[str, Field(min_length=1, description="URL; {stream} {rule} {alert_id} {app} {name} … are filled in (URL-quoted).")]
    body: Annotated[
        str, Field(description='Body template; each {field} becomes a JSON value, e.g. {"room": {name}, "why": {message}}.')
    ] = ""
    content_type: Annotated[str, Field(description="Content-Type of the body.")] = "application/json"
    secret_env: Annotated[str | None, Field(description="Environment variable holding the secret (read when the action runs).")] = None
    secret_header: Annotated[str, Field(description="Header that carries the secret.")] = "Authorization"
    secret_prefix: Annotated[str, Field(description="Text before the secret in that header.")] = "Bearer "


class ActionsConfig(_Section):
    dry_run: Annotated[bool, Field(description="Record what each action would call without calling it (every show).")] = False
    cut: Annotated[str, Field(description="What performs `cut`: nginx (control module), srs (HTTP API) or an [[actions.http]] name.")] = (
        "nginx"
    )
    warn: Annotated[
        str | None, Field(description="An [[actions.http]] name that performs `warn` (e.g. a message to the host); unset: recorded only.")
    ] = None
    timeout_s: Annotated[float, Field(gt=0, le=60, description="Seconds an action's HTTP calls may take in all.")] = 5.0
    nginx: Annotated[NginxControlConfig, Field(description="nginx-rtmp control module.")] = NginxControlConfig()
    srs: Annotated[SrsConfig, Field(description="SRS HTTP API.")] = SrsConfig()
    http: Annotated[list[HttpActionConfig], Field(description="Named HTTP actions (templates).")] = []

    @model_validator(mode="after")
    def _names(self) -> ActionsConfig:
        names = [h.name for h in self.http]
        for n in names:
            if n in (*BUILTIN, "cut", "warn") or names.count(n) > 1:
                raise ValueError(f"[[actions.http]] name {n!r} is reserved or used twice")
        if self.cut not in BUILTIN and self.cut not in names:
            raise ValueError(f"actions.cut = {self.cut!r}: not nginx, srs or an [[actions.http]] name")
        if self.warn is not None and self.warn not in names:
            raise ValueError(f"actions.warn = {self.warn!r}: no [[actions.http]] entry has that name")
        return self

    def named(self, name: str) -> HttpActionConfig | None:
        return next((h for h in self.http if h.name == name), None)
