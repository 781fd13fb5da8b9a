// streamwatch console: the stream wall (GET /streams every second, the latest analysed frame per stream)
// and the per-stream timeline (alerts, health periods, scene tags on a time axis).
"use strict";
(function () {
  const SW = window.SW; const $ = SW.$; const el = SW.el; const state = SW.state;
  // stopped: the stream's work stopped on an error (its reason says what follows); unwatched: no worker holds it (cluster)
  const VIEW = { connecting: "connecting", live: "live", stalled: "stalled", reconnecting: "outage", stopped: "stopped", ended: "ended",
                 no_video: "no_video", unwatched: "unwatched", unknown: "unknown" };  // no_video: audio only, not an outage
  const NOT_WATCHED = new Set(["stopped", "ended", "unwatched"]);  // a "not monitored" period on the timeline
  const tiles = new Map();
  const status = SW.status = new Map();  // stream id → the latest /streams entry
  const gone = new Set();  // streams removed at run time: off the wall (their alerts and timeline stay)
  let polled = 0;

  function dur(s) {
    s = Math.max(0, Math.floor(s || 0));
    const zh = SW.lang === "zh";
    if (s < 60) return s + (zh ? "秒" : "s");
    if (s < 3600) return Math.floor(s / 60) + (zh ? "分" : "m") + String(s % 60).padStart(2, "0") + (zh ? "秒" : "s");
    return Math.floor(s / 3600) + (zh ? "小时" : "h") + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + (zh ? "分" : "m");
  }

  function tile(sid) {
    let t = tiles.get(sid);
    if (t) return t;
    t = el("div", "tile"); t.dataset.stream = sid; t.dataset.state = "unknown"; t.dataset.frames = "0";
    const pic = el("div", "pic"); const img = el("img"); img.alt = sid;
    img.onload = () => { t.dataset.frames = String(Number(t.dataset.frames) + 1); t.dataset.frameOffset = img.dataset.offset; t.loading = false; };
    img.onerror = () => { t.loading = false; };
    pic.appendChild(img); pic.appendChild(el("div", "badge")); t.appendChild(pic);
    const info = el("div", "info");
    ["name", "state", "dur dim", "off dim", "pend"].forEach((c) => info.appendChild(el("span", c)));
    t.appendChild(info);
    t.onclick = () => { $("tl-stream").value = sid; SW.showTab("timeline"); renderTimeline(); };
    const wall = $("wall"); const after = [...wall.children].find((x) => x.dataset.stream > sid);
    wall.insertBefore(t, after || null);
    tiles.set(sid, t);
    return t;
  }

  function renderTile(sid) {
    if (gone.has(sid)) return;
    const s = status.get(sid); const t = tile(sid);
    const pending = SW.pendingIn(sid);
    t.querySelector(".name").textContent = sid;
    t.querySelector(".pend").textContent = SW.t("pending", { n: pending });
    t.querySelector(".pend").classList.toggle("zero", pending === 0);
    if (!s) return;
    const view = VIEW[s.state] || "unknown";
    t.dataset.state = view; t.dataset.black = s.black; t.dataset.frozen = s.frozen;
    const forS = s.for_s == null ? null : s.for_s + (performance.now() - polled) / 1000;
    t.querySelector(".state").textContent = SW.t("st_" + view);
    t.querySelector(".dur").textContent = forS == null ? "" : dur(forS);
    const behind = s.frame ? s.offset - s.frame.offset : 0;  // the picture is the last analysed frame: say when it is old
    t.querySelector(".off").textContent = SW.hms(s.offset) + (behind > 5 ? " · " + SW.t("frame_at", { t: SW.hms(s.frame.offset) }) : "");
    const badge = [];
    if (view !== "live") badge.push(SW.t("st_" + view) + (forS == null ? "" : " " + dur(forS)));
    if (s.black) badge.push(SW.t("black"));
    if (s.frozen) badge.push(SW.t("frozen"));
    if (s.analysis_failing) badge.push(SW.t("analysis_failing"));
    if (s.storage_failing) badge.push(SW.t("storage_failing"));
    if (s.overloaded) badge.push(SW.t("overloaded"));
    if (!s.frame && view === "live") badge.push(SW.t("no_picture"));
    t.querySelector(".badge").textContent = badge.join(" · ");
    t.title = s.reason || "";
    const img = t.querySelector("img");
    if (s.frame && String(s.frame.offset) !== img.dataset.offset && !t.loading) {
      t.loading = true; img.dataset.offset = String(s.frame.offset);
      img.src = "/streams/" + encodeURIComponent(sid) + "/frame.jpg?token=" + encodeURIComponent(SW.token) + "&o=" + s.frame.offset;
    }
  }

  async function poll() {
    try {
      const r = await SW.api("/streams");
      if (r.ok) {
        const body = await r.json(); polled = performance.now();
        const listed = new Set(body.streams.map((s) => s.id));
        status.forEach((_s, sid) => {  // listed before, not now: removed at run time
          if (listed.has(sid)) return;
          status.delete(sid); gone.add(sid);
          const t = tiles.get(sid); if (t) { t.remove(); tiles.delete(sid); }
        });
        body.streams.forEach((s) => { gone.delete(s.id); status.set(s.id, s); SW.addStream(s.id); renderTile(s.id); });
      }
    } catch (e) { /* the server is away: the header shows reconnecting */ }
    setTimeout(poll, 1000);
  }
  SW.on("stream", (sid) => renderTile(sid));
  const dirty = new Set(); let dirtyTimer = null;
  function renderSoon(sid) {  // pending counts: once per burst of alerts/reviews, not once per event
    dirty.add(sid);
    if (!dirtyTimer) dirtyTimer = setTimeout(() => { dirtyTimer = null; dirty.forEach(renderTile); dirty.clear(); }, 200);
  }
  SW.on("alert", (ev) => renderSoon(ev.stream));
  SW.on("review", (ev) => renderSoon(ev.stream));
  SW.on("lang", () => { tiles.forEach((_t, sid) => renderTile(sid)); renderTimeline(); });
  SW.on("hello", () => { if (!poll.started) { poll.started = true; poll(); } });

  // --- timeline ---------------------------------------------------------------------------------------
  const NS = "http://www.w3.org/2000/svg";
  const PERIOD_COLOUR = { black: "#555", frozen: "#1c7ed6", outage: "#e03131", stalled: "#f08c00", gap: "#868e96", cut: "#7048e8" };
  const SEV_COLOUR = { low: "#4c8bf5", medium: "#f2b01e", high: "#f26b1d", critical: "#d7263d" };
  function svg(tag, attrs, parent, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  /** Health periods of one stream from its health events (id order): black/frozen, outage, stalled, not monitored. */
  function periods(sid, now) {
    const out = []; const open = {}; const opened = {};  // kind → start offset, and its wall time (ms)
    const close = (kind, end) => { if (open[kind] != null) { out.push({ kind: kind, start: open[kind], end: end }); delete open[kind]; } };
    const begin = (kind, h) => { if (open[kind] == null) { open[kind] = h.offset; opened[kind] = Date.parse(h.at); } };
    state.health.filter((h) => h.stream === sid).forEach((h) => {
      if (h.kind === "black" || h.kind === "frozen") {
        if (h.active) begin(h.kind, h);
        else { if (open[h.kind] == null) open[h.kind] = h.offset - (h.duration_s || 0); close(h.kind, h.offset); }
      } else if (h.kind === "state") {
        const cut = h.caused_by && (h.state === "stalled" || h.state === "reconnecting");  // the outage a cut made: on purpose
        const view = cut ? "cut" : VIEW[h.state];
        if (view !== "cut") close("cut", h.offset);
        if (view !== "outage") close("outage", h.offset);
        if (view !== "stalled") close("stalled", h.offset);
        if (!NOT_WATCHED.has(view)) close("gap", h.offset);
        if (view === "outage" || view === "stalled" || view === "cut") begin(view, h);
        else if (NOT_WATCHED.has(view)) begin("gap", h);
      }
    });
    // still open: the stream offset stands still in an outage, so it lasts by the wall clock
    Object.keys(open).forEach((k) => close(k, Math.max(now, open[k] + Math.max(0, Date.now() - (opened[k] || Date.now())) / 1000)));
    return out;
  }
  /** The right end of the time axis: the stream's offset, its last event, or the end of an open period. */
  function axisEnd(sid, base) { return Math.max(base, ...periods(sid, base).map((p) => p.end)); }
  function renderTimeline() {
    if (document.body.dataset.tab !== "timeline") return;
    const sid = $("tl-stream").value; const body = $("tl-body"); body.textContent = "";
    if (!sid) return;
    $("tl-report").href = "/report/" + encodeURIComponent(sid) + "?format=html&token=" + encodeURIComponent(SW.token);
    const alerts = [...state.alerts.values()].map((a) => a.ev).filter((e) => e.stream === sid);
    const scenes = state.scenes.filter((e) => e.stream === sid);
    const health = state.health.filter((e) => e.stream === sid);
    const st = status.get(sid);
    const now = axisEnd(sid, Math.max(st ? st.offset : 0, ...alerts.map((e) => e.offset), ...scenes.map((e) => e.offset),
                                      ...health.map((e) => e.offset), 1));
    if (!alerts.length && !scenes.length && !health.length) { body.appendChild(el("p", null, SW.t("tl_empty"))); return; }
    const W = Math.max(600, body.clientWidth); const H = 190; const L = 70; const R = 16;
    const x = (t) => L + (Math.max(0, t) / now) * (W - L - R);
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, height: H, "data-stream": sid }, body);
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
    const step = steps.find((s) => now / s <= 10) || 14400;
    for (let t = 0; t <= now; t += step) {
      svg("line", { x1: x(t), x2: x(t), y1: 20, y2: H - 6, stroke: "#2b2e3a" }, root);
      if (x(t) + 56 < W) svg("text", { x: x(t) + 2, y: 14 }, root, SW.hms(t));
    }
    [["tl_health", 48], ["tl_alerts", 98], ["tl_scenes", 150]].forEach(([k, y]) => svg("text", { x: 6, y: y }, root, SW.t(k)));
    periods(sid, now).forEach((p) => {
      const r = svg("rect", { x: x(p.start), y: 32, width: Math.max(2, x(p.end) - x(p.start)), height: 26, fill: PERIOD_COLOUR[p.kind],
                              class: "tl-period", "data-kind": p.kind }, root);
      svg("title", {}, r, SW.t("p_" + p.kind) + " " + SW.hms(p.start) + "–" + SW.hms(p.end));
    });
    alerts.forEach((e) => {
      const g = svg("g", { class: "tl-alert", "data-id": e.id }, root);
      svg("rect", { x: x(e.offset) - 3, y: 72, width: 6, height: 40, rx: 2, fill: SEV_COLOUR[e.severity] || "#aaa" }, g);
      svg("title", {}, g, SW.hms(e.offset) + " " + e.rule + ": " + e.message);
      g.addEventListener("click", () => SW.select(e.id));
    });
    scenes.forEach((e) => {
      const c = svg("circle", { cx: x(e.offset), cy: 146, r: 5, fill: "#94d82d", class: "tl-scene" }, root);
      svg("title", {}, c, SW.hms(e.offset) + " " + (e.tags || []).join(", "));
    });
    const legend = document.querySelector("#panel-timeline .legend"); legend.textContent = "";
    Object.keys(PERIOD_COLOUR).forEach((k) => {
      const s = el("span", null, "■ " + SW.t("p_" + k) + "  "); s.style.color = PERIOD_COLOUR[k]; legend.appendChild(s);
    });
  }
  let tlTimer = null;
  const soon = () => { if (!tlTimer) tlTimer = setTimeout(() => { tlTimer = null; renderTimeline(); }, 300); };
  SW.on("event", soon);
  SW.on("tab", (tab) => { if (tab === "timeline") renderTimeline(); });
  $("tl-stream").onchange = renderTimeline;
  setInterval(() => { tiles.forEach((_t, sid) => renderTile(sid)); soon(); }, 2000);
  SW.renderTimeline = renderTimeline;
})();
