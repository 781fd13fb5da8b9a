// streamwatch console: UI strings (zh-CN default, English), applied to [data-i18n] / [data-i18n-ph].
"use strict";
(function () {
  const SW = window.SW = window.SW || {};
  SW.STRINGS = {
    zh: {
      title: "streamwatch 审核台", conn_connecting: "连接中…", conn_connected: "已连接", conn_reconnecting: "重连中…",
      conn_notoken: "请在网址后加 ?token=…", conn_forbidden: "需要审核员或管理员令牌",
      tab_queue: "告警队列", tab_timeline: "时间线", tab_audience: "观众", tab_search: "搜索", tab_models: "模型",
      mute: "♪ 声音开", unmute: "✕ 已静音", lang: "English",
      st_connecting: "连接中", st_live: "直播中", st_stalled: "卡顿", st_no_video: "无视频", st_outage: "中断", st_ended: "已结束", st_stopped: "已停止", analysis_failing: "分析失败", storage_failing: "存储失败（磁盘满）", overloaded: "分析过载（降级采样）", st_unwatched: "无人监看", st_unknown: "未知",
      black: "黑屏", frozen: "画面冻结", pending: "待审 {n}", frame_at: "画面 {t}", no_picture: "暂无画面",
      f_all_streams: "全部流", f_all_severities: "全部级别", f_medium_up: "中及以上", f_high_up: "高及以上", f_all_rules: "全部规则",
      f_pending: "仅待审", f_count: "{shown} / {total} 条",
      keys_help: "j/k 移动 · c 确认 · d 驳回 · n 备注 · x 执行处置",
      ac_run: "执行{action}", ac_cut: "断流", ac_warn: "警告", ac_pending: "{action}：待确认", ac_done: "{action}：已执行 · {by}",
      ac_failed: "{action}：失败 · {by} — {detail}", ac_dry_run: "{action}：演练，未执行 · {by}", ac_off: "{action}：本场已关闭处置",
      acs_pending: "待{action}", acs_done: "已{action}", acs_failed: "{action}失败", acs_dry_run: "{action}演练", acs_off: "处置关闭",
      ac_policy: "策略自动", ac_sent: "已发送处置请求", ac_none: "此告警没有待确认的处置",
      sev_low: "低", sev_medium: "中", sev_high: "高", sev_critical: "严重",
      no_alerts: "暂无告警", no_frame: "健康告警：没有画面", no_frame_black: "健康告警：黑屏（画面全黑）", no_frame_frozen: "健康告警：画面冻结（画面没有变化）",
      no_frame_outage: "健康告警：信号中断（没有画面）", no_frame_monitoring_gap: "健康告警：监控中断（守护进程未运行）",
      no_frame_storage: "健康告警：存储失败（磁盘已满）", no_frame_no_video: "健康告警：只有音频（没有视频）", no_frame_overloaded: "健康告警：分析过载（分析滞后）", unsaved: "证据图片未保存（磁盘已满）",
      act_confirm: "确认", act_dismiss: "驳回", act_note: "备注", note_ph: "备注（回车保存，再按 c / d 提交）",
      rv_pending: "待审", rv_confirm: "已确认 · {by}", rv_dismiss: "已驳回 · {by}",
      k_stream: "流", k_rule: "规则", k_severity: "级别", k_offset: "偏移", k_wall: "时间", k_confidence: "置信度",
      k_kind: "证据", k_latency: "延迟", k_ocr: "OCR 文字", k_qr: "二维码内容", k_labels: "标签",
      urgent: "{n} 条高危待审", write_report: "生成报告 ↗",
      tl_health: "健康", tl_alerts: "告警", tl_scenes: "场景", tl_empty: "这个流还没有事件",
      p_black: "黑屏", p_frozen: "冻结", p_outage: "中断", p_stalled: "卡顿", p_gap: "监控中断", p_cut: "处置断流",
      aud_submissions: "观众投稿", aud_qa: "现场问答", ask_ph: "向模型提问（当前画面）", ask_send: "提问",
      aud_reply: "回复", aud_rejected: "已拒绝：{reason}", aud_empty: "还没有投稿", ask_accepted: "已提交，等待回答…",
      search_ph: "搜索画面…（例如：吉他、二维码、加微信）", search_go: "搜索", search_encoder: "按画面内容搜索（视觉编码器）",
      search_ocr: "未启用视觉编码器：按事件的 OCR 文字 / 标签搜索", search_none: "没有结果",
      m_role: "角色", m_chain: "模型链（第一个在用）", m_requests: "最近请求（按模型）", m_health: "模型健康（最新在前）", m_health_none: "没有模型故障", m_switch: "切换",
      m_switching: "切换中：加载并预热 {model}…", m_switched: "{role} 已切换：{old} → {model}（{s} 秒）", m_none: "此服务没有 VLM 层",
      error: "错误：{msg}",
    },
    en: {
      title: "streamwatch console", conn_connecting: "connecting…", conn_connected: "connected", conn_reconnecting: "reconnecting…",
      conn_notoken: "add ?token=… to the URL", conn_forbidden: "a moderator or admin token is required",
      tab_queue: "Alerts", tab_timeline: "Timeline", tab_audience: "Audience", tab_search: "Search", tab_models: "Models",
      mute: "♪ sound on", unmute: "✕ muted", lang: "中文",
      st_connecting: "connecting", st_live: "live", st_stalled: "stalled", st_no_video: "no video", st_outage: "outage", st_ended: "ended", st_stopped: "stopped", analysis_failing: "analysis failing", storage_failing: "storage failing (disk full)", overloaded: "overloaded (sampling degraded)", st_unwatched: "not watched", st_unknown: "unknown",
      black: "black", frozen: "frozen", pending: "{n} pending", frame_at: "frame {t}", no_picture: "no picture yet",
      f_all_streams: "all streams", f_all_severities: "all severities", f_medium_up: "medium and up", f_high_up: "high and up",
      f_all_rules: "all rules", f_pending: "pending only", f_count: "{shown} / {total}",
      keys_help: "j/k move · c confirm · d dismiss · n note · x run action",
      ac_run: "Run {action}", ac_cut: "cut", ac_warn: "warn", ac_pending: "{action}: awaiting confirmation", ac_done: "{action}: done · {by}",
      ac_failed: "{action}: failed · {by} — {detail}", ac_dry_run: "{action}: dry run, not called · {by}", ac_off: "{action}: actions off for this show",
      acs_pending: "{action}?", acs_done: "{action} done", acs_failed: "{action} failed", acs_dry_run: "{action} dry run", acs_off: "actions off",
      ac_policy: "policy (automatic)", ac_sent: "action request sent", ac_none: "this alert has no action awaiting confirmation",
      sev_low: "low", sev_medium: "medium", sev_high: "high", sev_critical: "critical",
      no_alerts: "No alerts", no_frame: "health alert: no picture", no_frame_black: "health alert: black picture", no_frame_frozen: "health alert: frozen picture",
      no_frame_outage: "health alert: outage (no picture)", no_frame_monitoring_gap: "health alert: not monitored (the daemon was down)",
      no_frame_storage: "health alert: storage failing (disk full)", no_frame_no_video: "health alert: audio only (no video)", no_frame_overloaded: "health alert: overloaded (analysis behind)", unsaved: "evidence image not saved (disk full)",
      act_confirm: "Confirm", act_dismiss: "Dismiss", act_note: "Note", note_ph: "note (Enter keeps it, then c / d sends it)",
      rv_pending: "pending", rv_confirm: "confirmed · {by}", rv_dismiss: "dismissed · {by}",
      k_stream: "stream", k_rule: "rule", k_severity: "severity", k_offset: "offset", k_wall: "time", k_confidence: "confidence",
      k_kind: "evidence", k_latency: "latency", k_ocr: "OCR text", k_qr: "QR payload", k_labels: "labels",
      urgent: "{n} high/critical pending", write_report: "Write report ↗",
      tl_health: "health", tl_alerts: "alerts", tl_scenes: "scenes", tl_empty: "no events for this stream yet",
      p_black: "black", p_frozen: "frozen", p_outage: "outage", p_stalled: "stalled", p_gap: "not monitored", p_cut: "cut by an action",
      aud_submissions: "Submissions", aud_qa: "Live Q&A", ask_ph: "ask the model (current picture)", ask_send: "Ask",
      aud_reply: "reply", aud_rejected: "rejected: {reason}", aud_empty: "no submissions yet", ask_accepted: "sent, waiting for the answer…",
      search_ph: "search frames… (e.g. guitar, QR code)", search_go: "Search", search_encoder: "frames by content (vision encoder)",
      search_ocr: "no vision encoder: searching events' OCR text and tags", search_none: "no results",
      m_role: "role", m_chain: "chain (first serves)", m_requests: "requests by model", m_health: "model health (newest first)", m_health_none: "no model failures", m_switch: "Switch",
      m_switching: "switching: loading and warming {model}…", m_switched: "{role} switched: {old} → {model} ({s} s)", m_none: "no VLM tier on this server",
      error: "error: {msg}",
    },
  };
  SW.lang = "zh";
  SW.t = function (key, vars) {
    let s = (SW.STRINGS[SW.lang] || {})[key];
    if (s == null) s = SW.STRINGS.zh[key] != null ? SW.STRINGS.zh[key] : key;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (vars[k] != null ? String(vars[k]) : m));
    return s;
  };
  SW.applyLang = function (lang) {
    SW.lang = lang === "en" ? "en" : "zh";
    document.documentElement.lang = SW.lang === "en" ? "en" : "zh-CN";
    document.body.dataset.lang = SW.lang;
    document.querySelectorAll("[data-i18n]").forEach((e) => { e.textContent = SW.t(e.dataset.i18n); });
    document.querySelectorAll("[data-i18n-ph]").forEach((e) => { e.placeholder = SW.t(e.dataset.i18nPh); });
  };
})();
