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

from streamwatch.events.model import HealthEvent, HealthKind

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
    "state.no_video": {"zh": "无视频（仅音频）", "en": "no video"},
    "health.segment_missing": {"zh": "分片缺失：{s:.1f} 秒无法监看", "en": "segment missing: {s:.1f}s not watched"},
    "health.again_after": {"zh": "{state}（中断 {s:.1f} 秒后恢复）", "en": "{state} again after {s:.1f}s"},
    "health.config": {"zh": "配置", "en": "configuration"},
    "health.model": {"zh": "模型切换", "en": "model switch"},
    "health.model_on": {"zh": "模型故障", "en": "model failing"},
    "health.model_off": {"zh": "模型已恢复", "en": "model works again"},
    "health.webhook_on": {"zh": "回调推送失败", "en": "webhook failing"},
    "health.webhook_off": {"zh": "回调推送已恢复", "en": "webhook delivers again"},
    "health.storage_on": {"zh": "存储失败（磁盘满）", "en": "storage failing"},
    "health.storage_off": {"zh": "存储已恢复", "en": "storage ok"},
    "health.overloaded_on": {"zh": "分析过载，已降级采样", "en": "overloaded, sampling degraded"},
    "health.overloaded_off": {"zh": "分析负载已恢复，采样恢复正常", "en": "overload over, sampling back to normal"},
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
    "alert.reply_reported": {"zh": "人设回复被{who}举报：{text}", "en": "Persona reply reported by {who}: {text}"},
    "alert.via": {"zh": "{user}（经 {token}）", "en": "{user} (via {token})"},
    # actions
    "action.cut": {"zh": "断流", "en": "cut"},
    "action.warn": {"zh": "警告", "en": "warn"},
    "action.pending": {"zh": "待确认", "en": "awaiting confirmation"},
    "action.done": {"zh": "已执行", "en": "done"},
    "action.failed": {"zh": "失败", "en": "failed"},
    "action.dry_run": {"zh": "演练（未执行）", "en": "dry run (not called)"},
    "action.off": {"zh": "本场已关闭处置", "en": "actions off for this show"},
    "action.by_policy": {"zh": "策略自动", "en": "policy (automatic)"},
    # severities, periods, review states
    "sev.low": {"zh": "低", "en": "low"},
    "sev.medium": {"zh": "中", "en": "medium"},
    "sev.high": {"zh": "高", "en": "high"},
    "sev.critical": {"zh": "严重", "en": "critical"},
    "period.outage": {"zh": "中断", "en": "outage"},
    "period.cut": {"zh": "处置断流", "en": "cut by an action"},
    "period.black": {"zh": "黑屏", "en": "black"},
    "period.frozen": {"zh": "画面冻结", "en": "frozen"},
    "period.monitoring_gap": {"zh": "无人监看", "en": "not watched"},
    "period.analysis_failing": {"zh": "分析失败", "en": "analysis failing"},
    "period.segment_missing": {"zh": "分片缺失", "en": "segment missing"},
    "period.storage_failing": {"zh": "存储失败（磁盘满）", "en": "storage failing"},
    "period.overloaded": {"zh": "分析过载", "en": "overloaded"},
    "period.open": {"zh": "未结束", "en": "open"},
    "period.open_so_far": {"zh": "未结束，已 {s:.1f} 秒", "en": "open, {s:.1f}s so far"},
    "review.pending": {"zh": "待审", "en": "pending"},
    "review.confirmed": {"zh": "已确认", "en": "confirmed"},
    "review.dismissed": {"zh": "已驳回", "en": "dismissed"},
    "review.by": {"zh": "{state}（{by}）", "en": "{state} by {by}"},
    # report.html
    "r.title": {"zh": "直播报告：{stream}", "en": "Stream report: {stream}"},
    "r.events": {"zh": "{n} 个事件", "en": "{n} events"},
    "r.times_in": {"zh": "时间为 {tz}", "en": "times in {tz}"},
    "r.summary": {"zh": "概览", "en": "Summary"},
    "r.duration": {"zh": "时长", "en": "duration"},
    "r.alerts": {"zh": "告警", "en": "alerts"},
    "r.reviewed": {"zh": "已审", "en": "reviewed"},
    "r.pending": {"zh": "待审", "en": "pending"},
    "r.outages": {"zh": "中断", "en": "outages"},
    "r.cuts": {"zh": "处置断流", "en": "cuts by actions"},
    "r.open": {"zh": "未结束", "en": "open"},
    "r.not_watched": {"zh": "无人监看", "en": "not watched"},
    "r.end": {"zh": "结束方式", "en": "end"},
    "r.replies": {"zh": "回复", "en": "replies"},
    "r.rejected": {"zh": "拒绝", "en": "rejected"},
    "r.by_severity": {"zh": "按级别和规则统计告警", "en": "Alerts by severity and rule"},
    "r.rule": {"zh": "规则", "en": "rule"},
    "r.timeline": {"zh": "时间线", "en": "Timeline"},
    "r.lane_health": {"zh": "健康", "en": "health"},
    "r.lane_alerts": {"zh": "告警", "en": "alerts"},
    "r.lane_actions": {"zh": "处置", "en": "actions"},
    "r.periods": {"zh": "健康时段", "en": "Health periods"},
    "r.offset": {"zh": "节目时间", "en": "offset"},
    "r.kind": {"zh": "类型", "en": "kind"},
    "r.length": {"zh": "时长", "en": "duration"},
    "r.detail": {"zh": "详情", "en": "detail"},
    "r.alert_list": {"zh": "告警明细", "en": "Alerts"},
    "r.wall": {"zh": "时间", "en": "time"},
    "r.severity": {"zh": "级别", "en": "severity"},
    "r.confidence": {"zh": "置信度", "en": "confidence"},
    "r.message": {"zh": "内容", "en": "message"},
    "r.evidence": {"zh": "证据", "en": "evidence"},
    "r.review": {"zh": "审核", "en": "review"},
    "r.actions": {"zh": "处置记录", "en": "Actions on the stream"},
    "r.action": {"zh": "处置", "en": "action"},
    "r.alert": {"zh": "告警", "en": "alert"},
    "r.by": {"zh": "发起", "en": "asked by"},
    "r.status": {"zh": "结果", "en": "result"},
    "r.target": {"zh": "对象", "en": "target"},
    "r.models": {"zh": "视觉语言模型", "en": "Vision-language models"},
    "r.switch": {"zh": "切换", "en": "switch"},
    "r.model_health": {"zh": "模型健康", "en": "model health"},
    "r.warmup": {"zh": "加载 + 预热", "en": "load + warm-up"},
    "r.scenes": {"zh": "场景（合规模型）", "en": "Scenes (compliance model)"},
    "r.tags": {"zh": "标签", "en": "tags"},
    "r.model": {"zh": "模型", "en": "model"},
    "r.frame": {"zh": "画面", "en": "frame"},
    "r.late": {"zh": "（超时）", "en": " (late)"},
    "r.feedback": {"zh": "回复：观众按模型和人设的反馈", "en": "Replies: audience feedback by model and persona"},
    "r.model_persona": {"zh": "模型 / 人设", "en": "model / persona"},
    "r.up": {"zh": "赞", "en": "up"},
    "r.down": {"zh": "踩", "en": "down"},
    "r.reported": {"zh": "举报", "en": "reported"},
    "r.legend": {"zh": "图例", "en": "legend"},
}


def describe_health(ev: HealthEvent, lang: Lang = "zh") -> str:
    """What a health event says, for people (``ev.reason`` is appended as it was written)."""
    if ev.kind is HealthKind.STATE and ev.state is not None:
        state = t("state." + ev.state.value, lang)
        text = t("health.again_after", lang, state=state, s=ev.gap_s) if ev.gap_s is not None else state
    elif ev.kind is HealthKind.CONFIG or (ev.kind is HealthKind.MODEL and ev.active is None):
        text = t("health." + ev.kind.value, lang)
    elif ev.kind in (HealthKind.MODEL, HealthKind.WEBHOOK, HealthKind.STORAGE, HealthKind.OVERLOADED):  # on: failing; off: ok again
        text = t(f"health.{ev.kind.value}_{'on' if ev.active else 'off'}", lang)
        if ev.kind in (HealthKind.STORAGE, HealthKind.OVERLOADED) and ev.duration_s is not None:
            text += t("health.after", lang, s=ev.duration_s)
    elif ev.kind is HealthKind.MONITORING_GAP:
        text = t("health.gap", lang, s=ev.duration_s or 0.0)
    elif ev.kind is HealthKind.SEGMENT_MISSING:
        text = t("health.segment_missing", lang, s=ev.duration_s or 0.0)
    elif ev.kind is HealthKind.ANALYSIS:
        text = t("health.analysis_on" if ev.active else "health.analysis_off", lang)
    else:
        what = t("health." + ev.kind.value, lang) if "health." + ev.kind.value in TEXTS else ev.kind.value
        text = t("health.started" if ev.active else "health.ended", lang, what=what)
        if ev.duration_s is not None:
            text += t("health.after", lang, s=ev.duration_s)
    if ev.attempt:
        text += t("health.attempt", lang, n=ev.attempt)
    if ev.caused_by is not None:
        text += t("health.caused_by", lang, id=ev.caused_by)
    if ev.reason:
        text += ("：" if lang == "zh" else ": ") + ev.reason
    return text


def t(key: str, lang: Lang, **values: object) -> str:
    """The text of ``key`` in ``lang`` (English when a key has no such line), with ``values`` filled in."""
    entry = TEXTS[key]
    return entry.get(lang, entry["en"]).format(**values)
