"""What the desk reads, in its language: alert, health and action texts, report wording, show times.

One catalogue (:data:`TEXTS`, key → {"zh", "en"}) for every text streamwatch writes for people, so a
new health kind or report section adds its lines here. Simplified Chinese by default, English by
``[ui] language = "en"``; times in the show's time zone (``[ui] timezone``, zoneinfo). Pure: no I/O
beyond the zoneinfo database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = ("zh", "en")


class UIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    language: Annotated[Lang, Field(description="Language of alert texts, health texts and reports: zh (Simplified Chinese) or en.")] = "zh"
    timezone: Annotated[str, Field(description="The show's time zone for times in reports and texts (IANA name, e.g. Asia/Shanghai).")] = (
        "Asia/Shanghai"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v


def zone(name: str) -> ZoneInfo:
    """The zoneinfo of ``name``; ValueError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai or UTC)") from e


def local_time(ts: float, tz: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Epoch seconds as wall time in ``tz``, with the zone's abbreviation or offset (``2026-11-21 18:00:00 CST``)."""
    dt = datetime.fromtimestamp(ts, zone(tz))
    name = dt.tzname() or dt.strftime("%z")
    if name.startswith(("+", "-")):
        name = "UTC" + name[:3] + (":" + name[3:] if len(name) > 3 and name[3:] != "00" else "")
    return f"{dt.strftime(fmt)} {name}"


TEXTS: dict[str, dict[Lang, str]] = {
    # health (HealthEvent.kind / state)
    "state.connecting": {"zh": "连接中", "en": "connecting"},
    "state.live": {"zh": "直播中", "en": "live"},
    "state.stalled": {"zh": "卡顿", "en": "stalled"},
    "state.reconnecting": {"zh": "重连中", "en": "reconnecting"},
    "state.stopped": {"zh": "已停止", "en": "stopped"},
    "state.ended": {"zh": "已结束", "en": "ended"},
    "state.unwatched": {"zh": "无人监看", "en": "not watched"},
    "health.again_after": {"zh": "{state}（中断 {s:.1f} 秒后恢复）", "en": "{state} again after {s:.1f}s"},
    "health.config": {"zh": "配置", "en": "configuration"},
    "health.model": {"zh": "模型切换", "en": "model switch"},
    "health.gap": {"zh": "监控中断 {s:.1f} 秒", "en": "monitoring gap of {s:.1f}s"},
    "health.analysis_on": {"zh": "分析失败", "en": "analysis failing"},
    "health.analysis_off": {"zh": "分析已恢复", "en": "analysis works again"},
    "health.black": {"zh": "黑屏", "en": "black"},
    "health.frozen": {"zh": "画面冻结", "en": "frozen"},
    "health.started": {"zh": "{what}开始", "en": "{what} started"},
    "health.ended": {"zh": "{what}结束", "en": "{what} ended"},
    "health.after": {"zh": "（持续 {s:.1f} 秒）", "en": " after {s:.1f}s"},
    "health.attempt": {"zh": "（第 {n} 次尝试）", "en": " (attempt {n})"},
    "health.caused_by": {"zh": "（由处置 #{id} 断流引起，非故障）", "en": " (caused by action #{id}, not a fault)"},
    # actions
    "action.cut": {"zh": "断流", "en": "cut"},
    "action.warn": {"zh": "警告", "en": "warn"},
    "action.pending": {"zh": "待确认", "en": "awaiting confirmation"},
    "action.done": {"zh": "已执行", "en": "done"},
    "action.failed": {"zh": "失败", "en": "failed"},
    "action.dry_run": {"zh": "演练（未执行）", "en": "dry run (not called)"},
    "action.off": {"zh": "本场已关闭处置", "en": "actions off for this show"},
    "action.by_policy": {"zh": "策略自动", "en": "policy (automatic)"},
}


def t(key: str, lang: Lang, **values: object) -> str:
    """The text of ``key`` in ``lang`` (English when a key has no such line), with ``values`` filled in."""
    entry = TEXTS[key]
    return entry.get(lang, entry["en"]).format(**values)
