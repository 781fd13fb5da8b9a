// streamwatch console: connection (resume with since, no duplicates), alert queue, review, keyboard, chime.
"use strict";
(function () {
  const SW = window.SW;
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  const SEV_RANK = { low: 0, medium: 1, high: 2, critical: 3 };
  const state = SW.state = {
    lastId: params.has("since") ? Number(params.get("since")) : null, liveFrom: null, seen: new Set(), ws: null, delay: 500,
    role: null, name: null, unsaved: 0, alerts: new Map(), selected: null, health: [], scenes: [], streams: new Set(), rules: new Set(),
    picked: false, chimes: 0, muted: localStorage.getItem("sw.muted") === "1", drafts: new Map(), refs: 0,
  };
  const hooks = {};
  SW.token = token;
  SW.on = (type, fn) => { (hooks[type] = hooks[type] || []).push(fn); };
  const emit = (type, ev, live) => (hooks[type] || []).forEach((fn) => fn(ev, live));
  const $ = (id) => document.getElementById(id);
  SW.$ = $;
  SW.el = function (tag, cls, text) {
    const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e;
  };
  const el = SW.el;
  SW.frameUrl = (path) => (path ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : "");
  SW.hms = function (s) {
    s = Math.max(0, Math.floor(s || 0)); const p = (n) => String(n).padStart(2, "0");
    return p(Math.floor(s / 3600)) + ":" + p(Math.floor(s % 3600 / 60)) + ":" + p(s % 60);
  };
  SW.tz = undefined;  // the show's time zone (the server's [ui] timezone, from hello); the browser's until then
  SW.clock = (iso) => (iso ? new Date(iso).toLocaleTimeString(SW.lang === "en" ? "en-GB" : "zh-CN", { hour12: false, timeZone: SW.tz }) : "");
  SW.api = (path) => fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  SW.send = function (obj) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(obj)); return true;
  };
  SW.ref = (prefix) => prefix + "-" + (++state.refs);
  SW.toast = function (text) {
    const t = $("toast"); t.textContent = text; t.hidden = false;
    clearTimeout(SW.toast.timer); SW.toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
  };
  SW.addOption = function (select, value, label) {
    if ([...select.options].some((o) => o.value === value)) return;
    const o = el("option", null, label || value); o.value = value; select.appendChild(o);
  };
  SW.pending = (a) => !a.review;
  SW.pendingIn = (sid) => [...state.alerts.values()].filter((a) => a.ev.stream === sid && !a.review).length;

  // --- header: connection, language, mute, tabs ---------------------------------------------------
  function setState(s, key) { document.body.dataset.state = s; $("conn").dataset.i18n = key; $("conn").textContent = SW.t(key); }
  function setLang(lang, chosen) {
    localStorage.setItem("sw.lang", lang); if (chosen) localStorage.setItem("sw.lang.chosen", "1");
    SW.applyLang(lang); $("lang").textContent = SW.t("lang");
    $("mute").textContent = SW.t(state.muted ? "unmute" : "mute");
    state.alerts.forEach(renderRow); renderDetail(); updateUrgent(); refilterCount(); emit("lang");
  }
  $("lang").onclick = () => setLang(SW.lang === "zh" ? "en" : "zh", true);
  $("mute").onclick = () => { state.muted = !state.muted; localStorage.setItem("sw.muted", state.muted ? "1" : "0"); setLang(SW.lang); };
  SW.showTab = function (tab) {
    document.body.dataset.tab = tab;
    document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("on", b.dataset.tab === tab));
    emit("tab", tab);
  };
  document.querySelectorAll("#tabs button").forEach((b) => { b.onclick = () => SW.showTab(b.dataset.tab); });

  // --- chime and the title-bar count of urgent (high/critical) pending alerts ---------------------
  let audio = null;
  function chime() {
    state.chimes++; document.body.dataset.chimes = state.chimes;
    if (state.muted) return;
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      if (audio.state === "suspended") audio.resume();
      [880, 1320].forEach((f, i) => {
        const o = audio.createOscillator(); const g = audio.createGain(); const t0 = audio.currentTime + i * 0.18;
        o.frequency.value = f; o.type = "sine"; g.gain.setValueAtTime(0.0001, t0);
        g.gain.exponentialRampToValueAtTime(0.3, t0 + 0.02); g.gain.exponentialRampToValueAtTime(0.0001, t0 + 0.35);
        o.connect(g).connect(audio.destination); o.start(t0); o.stop(t0 + 0.4);
      });
    } catch (e) { console.warn("streamwatch: no audio", e); }
  }
  document.addEventListener("pointerdown", () => { if (audio && audio.state === "suspended") audio.resume(); });
  let urgentTimer = null;
  function updateUrgentSoon() {  // (a replay of thousands of alerts recounts once, not once per alert)
    if (!urgentTimer) urgentTimer = setTimeout(() => { urgentTimer = null; updateUrgent(); }, 50);
  }
  function updateUrgent() {
    const n = [...state.alerts.values()].filter((a) => !a.review && SEV_RANK[a.ev.severity] >= 2).length;
    document.title = (n ? "(" + n + ") " : "") + SW.t("title");
    $("urgent").textContent = n ? SW.t("urgent", { n: n }) : "";
    $("urgent").dataset.count = n;
  }

  // --- alert queue ----------------------------------------------------------------------------------
  function reviewText(a) { return a.review ? SW.t("rv_" + a.review.action, { by: a.review.by }) : SW.t("rv_pending"); }
  SW.actionName = (name) => (name === "cut" || name === "warn" ? SW.t("ac_" + name) : name);
  function actionText(ac) {
    return SW.t("ac_" + ac.status, { action: SW.actionName(ac.action), by: ac.by === "policy" ? SW.t("ac_policy") : ac.by, detail: ac.detail || "" });
  }
  function renderRow(a) {
    const ev = a.ev; const row = a.row;
    row.className = "arow sev-" + ev.severity + (state.selected === ev.id ? " sel" : "");
    if (a.review) row.dataset.review = a.review.action; else delete row.dataset.review;
    row.querySelector(".msg").textContent = ev.message;
    row.querySelector(".meta").textContent = [ev.stream, ev.rule, SW.t("sev_" + ev.severity), SW.hms(ev.offset), SW.clock(ev.at)].join(" · ");
    row.querySelector(".rv").textContent = reviewText(a) + (a.action ? " · " + SW.t("acs_" + a.action.status, { action: SW.actionName(a.action.action) }) : "");
    if (a.action) row.dataset.action = a.action.status; else delete row.dataset.action;
  }
  function addAlert(ev, live) {
    const row = el("li"); row.dataset.id = ev.id; row.dataset.stream = ev.stream; row.dataset.severity = ev.severity; row.dataset.rule = ev.rule;
    row.appendChild(el("span", "bar"));
    const img = el("img"); img.alt = ""; img.loading = "lazy";
    if (ev.evidence && ev.evidence.frame) img.src = SW.frameUrl(ev.evidence.frame);
    row.appendChild(img);
    const mid = el("div"); mid.style.minWidth = "0"; mid.appendChild(el("div", "msg")); mid.appendChild(el("div", "meta")); row.appendChild(mid);
    row.appendChild(el("span", "rv"));
    row.onclick = () => { state.picked = true; select(ev.id); };
    const a = { ev: ev, review: null, action: null, row: row };
    state.alerts.set(ev.id, a);
    renderRow(a);
    const list = $("alerts"); list.insertBefore(row, list.firstChild);  // ids only grow: newest first
    if (!state.streams.has(ev.stream)) SW.addStream(ev.stream);
    if (!state.rules.has(ev.rule)) { state.rules.add(ev.rule); SW.addOption($("f-rule"), ev.rule); }
    applyFilter(row, a);
    if (!state.picked && !row.hidden) select(ev.id);  // follow the newest until the moderator moves
    if (live && SEV_RANK[ev.severity] >= 2) chime();
  }
  SW.addStream = function (sid) {
    if (state.streams.has(sid)) return;
    state.streams.add(sid);
    ["f-stream", "tl-stream", "ask-stream", "search-stream"].forEach((id) => SW.addOption($(id), sid));
    emit("stream", sid);
  };
  function matches(a) {
    const f = filters();
    return (!f.stream || a.ev.stream === f.stream) && (!f.severity || SEV_RANK[a.ev.severity] >= SEV_RANK[f.severity]) &&
           (!f.rule || a.ev.rule === f.rule) && (!f.pending || !a.review);
  }
  function filters() {
    return { stream: $("f-stream").value, severity: $("f-severity").value, rule: $("f-rule").value, pending: $("f-pending").checked };
  }
  function applyFilter(row, a) { row.hidden = !matches(a); }
  function refilter() {
    state.alerts.forEach((a) => applyFilter(a.row, a));
    const shown = visible();
    $("f-count").textContent = SW.t("f_count", { shown: shown.length, total: state.alerts.size });
    if (state.selected === null || state.alerts.get(state.selected).row.hidden) select(shown.length ? shown[0] : null);
  }
  ["f-stream", "f-severity", "f-rule", "f-pending"].forEach((id) => { $(id).onchange = refilter; });
  function visible() { return [...$("alerts").children].filter((r) => !r.hidden).map((r) => Number(r.dataset.id)); }

  function select(id) {
    const old = state.selected !== null ? state.alerts.get(state.selected) : null;
    if (old) { old.row.classList.remove("sel"); state.drafts.set(old.ev.id, $("note").value); }
    state.selected = id;
    const a = id !== null ? state.alerts.get(id) : null;
    if (a) { a.row.classList.add("sel"); a.row.scrollIntoView({ block: "nearest" }); }
    $("note").value = a ? state.drafts.get(id) || "" : "";
    renderDetail();
  }
  SW.select = (id) => { if (state.alerts.has(id)) { SW.showTab("queue"); select(id); } };
  function fact(dl, key, value) { if (value == null || value === "") return; dl.appendChild(el("dt", null, SW.t(key))); dl.appendChild(el("dd", null, String(value))); }
  function renderDetail() {
    const a = state.selected !== null ? state.alerts.get(state.selected) : null;
    $("detail-empty").hidden = !!a; $("detail-body").hidden = !a;
    if (!a) return;
    const ev = a.ev; const evid = ev.evidence || {};
    const img = $("ev-img");
    $("ev-noframe").hidden = !!evid.frame; img.hidden = !evid.frame; $("ev-svg").style.display = evid.frame ? "" : "none";
    const cond = evid.kind === "health" ? evid.text || (evid.labels || [])[0] : null;  // black, frozen, outage, monitoring_gap, storage
    const noframe = $("ev-noframe");  // (an alert whose picture the full disk did not take says so)
    noframe.dataset.i18n = evid.unsaved ? "unsaved" : cond && SW.STRINGS.zh["no_frame_" + cond] ? "no_frame_" + cond : "no_frame";
    noframe.textContent = SW.t(noframe.dataset.i18n); noframe.title = evid.unsaved || "";
    const src = evid.frame ? SW.frameUrl(evid.frame) : "";
    if (img.dataset.src !== src) { img.dataset.src = src; $("ev-box").setAttribute("width", "0"); img.removeAttribute("src"); if (src) img.src = src; }
    else drawBox();
    $("d-message").textContent = ev.message;
    const dl = $("d-facts"); dl.textContent = "";
    fact(dl, "k_stream", ev.stream); fact(dl, "k_rule", ev.rule);
    fact(dl, "k_severity", SW.t("sev_" + ev.severity)); fact(dl, "k_confidence", Math.round(ev.confidence * 100) + "%");
    fact(dl, "k_offset", SW.hms(ev.offset)); fact(dl, "k_wall", SW.clock(ev.at));
    fact(dl, "k_kind", evid.kind);
    if (ev.received_at) fact(dl, "k_latency", ((new Date(ev.at) - new Date(ev.received_at)) / 1000).toFixed(2) + " s");
    if (evid.labels && evid.labels.length) fact(dl, "k_labels", evid.labels.join(", "));
    const text = $("d-text"); text.textContent = "";
    if (evid.text) text.textContent = SW.t(evid.kind === "qr" ? "k_qr" : "k_ocr") + "：" + evid.text;
    $("d-review").textContent = a.review ? reviewText(a) + (a.review.note ? " — " + a.review.note : "") : "";
    $("d-action").textContent = a.action ? actionText(a.action) + " · " + SW.clock(a.action.at) : "";
    $("d-action").dataset.status = a.action ? a.action.status : "";
    $("d-run").hidden = !(a.action && a.action.status === "pending");
    if (a.action) $("d-run-label").textContent = SW.t("ac_run", { action: SW.actionName(a.action.action) });
    $("detail-body").dataset.id = ev.id;
  }
  function drawBox() {
    const a = state.alerts.get(state.selected); const img = $("ev-img"); const box = $("ev-box");
    const bbox = a && a.ev.evidence && a.ev.evidence.bbox;
    if (!img.naturalWidth) return;
    $("ev-svg").setAttribute("viewBox", "0 0 " + img.naturalWidth + " " + img.naturalHeight);
    if (!bbox) { box.setAttribute("width", "0"); return; }
    box.setAttribute("x", bbox[0]); box.setAttribute("y", bbox[1]);
    box.setAttribute("width", Math.max(1, bbox[2] - bbox[0])); box.setAttribute("height", Math.max(1, bbox[3] - bbox[1]));
  }
  $("ev-img").onload = drawBox;

  function ack(action) {
    const a = state.selected !== null ? state.alerts.get(state.selected) : null;
    if (!a) return;
    state.picked = true;
    const note = $("note").value.trim().slice(0, 2000);
    if (!SW.send({ type: "ack", id: a.ev.id, action: action, note: note, ref: "ack-" + a.ev.id })) SW.toast(SW.t("conn_reconnecting"));
    state.drafts.delete(a.ev.id); $("note").value = "";
    if (!$("f-pending").checked) move(1);  // (with "pending only" the row leaves the list when the review arrives)
  }
  function runAction() {  // a moderator confirms the action the alert's rule waits to run (cut, warn, …)
    const a = state.selected !== null ? state.alerts.get(state.selected) : null;
    if (!a) return;
    if (!a.action || a.action.status !== "pending") { SW.toast(SW.t("ac_none")); return; }
    if (!SW.send({ type: "act", alert: a.ev.id, ref: "act-" + a.ev.id })) SW.toast(SW.t("conn_reconnecting")); else SW.toast(SW.t("ac_sent"));
  }
  document.querySelectorAll("#d-actions button").forEach((b) => {
    b.onclick = () => (b.dataset.act === "note" ? $("note").focus() : b.dataset.act === "run" ? runAction() : ack(b.dataset.act));
  });
  function move(step) {
    state.picked = true;
    const ids = visible(); if (!ids.length) return;
    const i = ids.indexOf(state.selected);
    select(ids[Math.min(ids.length - 1, Math.max(0, i < 0 ? 0 : i + step))]);
  }
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT") {
      if (t.id === "note" && (e.key === "Enter" && !e.shiftKey || e.key === "Escape")) { e.preventDefault(); t.blur(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || document.body.dataset.tab !== "queue") return;
    const k = e.key.toLowerCase();
    if (k === "j") move(1); else if (k === "k") move(-1);
    else if (k === "c") ack("confirm"); else if (k === "d") ack("dismiss"); else if (k === "x") runAction();
    else if (k === "n") { e.preventDefault(); $("note").focus(); } else return;
    e.preventDefault();
  });

  // --- events ---------------------------------------------------------------------------------------
  function onEvent(ev) {
    if (ev.unsaved === true && typeof ev.id !== "number") ev.id = --state.unsaved;  // the disk is full: shown now, stored later
    if (typeof ev.id !== "number" || state.seen.has(ev.id)) return;  // never twice, also across reconnects
    state.seen.add(ev.id);
    if (ev.id > 0 && (state.lastId === null || ev.id > state.lastId)) state.lastId = ev.id;
    const live = ev.id < 0 || (state.liveFrom !== null && ev.id > state.liveFrom);
    if (ev.stream) SW.addStream(ev.stream);
    if (ev.type === "alert") { addAlert(ev, live); updateUrgentSoon(); refilterCount(); }
    else if (ev.type === "review") {
      const a = state.alerts.get(ev.alert_id);
      if (a) {
        const ids = visible(); const i = ids.indexOf(a.ev.id);
        a.review = ev; renderRow(a); applyFilter(a.row, a); updateUrgentSoon(); refilterCount();
        if (a.ev.id === state.selected) {  // (with "pending only" the reviewed row leaves: go to its neighbour)
          if (a.row.hidden) select(i + 1 < ids.length ? ids[i + 1] : i > 0 ? ids[i - 1] : null); else renderDetail();
        }
      }
    } else if (ev.type === "action") {
      const a = state.alerts.get(ev.alert_id);
      if (a && (!a.action || ev.id > a.action.id)) { a.action = ev; renderRow(a); if (a.ev.id === state.selected) renderDetail(); }
    } else if (ev.type === "health") state.health.push(ev);
    else if (ev.type === "scene") state.scenes.push(ev);
    emit(ev.type, ev, live);
    emit("event", ev, live);
  }
  let countTimer = null;
  function refilterCount() {
    if (countTimer) return;
    countTimer = setTimeout(() => { countTimer = null; $("f-count").textContent = SW.t("f_count", { shown: visible().length, total: state.alerts.size }); }, 100);
  }

  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws?token=" + encodeURIComponent(token);
    const ws = new WebSocket(url); state.ws = ws;
    ws.onmessage = (m) => {
      let msg; try { msg = JSON.parse(m.data); } catch (e) { return; }
      if (msg.type === "hello") {
        state.delay = 500; state.role = msg.role; state.name = msg.name;
        if (msg.ui) {  // the desk's defaults: its time zone, and its language unless this browser chose one
          const tzChanged = SW.tz !== msg.ui.timezone; SW.tz = msg.ui.timezone;
          if (!params.get("lang") && !localStorage.getItem("sw.lang.chosen") && msg.ui.language !== SW.lang) setLang(msg.ui.language, false);
          else if (tzChanged) { state.alerts.forEach(renderRow); renderDetail(); }  // wall times in the show's zone
        }
        if (msg.role !== "moderator" && msg.role !== "admin") { setState("error", "conn_forbidden"); state.ws = null; ws.close(); return; }
        document.body.dataset.role = msg.role; $("who").textContent = msg.name + " (" + msg.role + ")";
        if (state.liveFrom === null) state.liveFrom = msg.last_id;  // older events are history: no chime
        setState("connected", "conn_connected");
        SW.send({ type: "subscribe", channels: ["alerts", "health", "replies", "answers", "reviews", "scenes", "actions"],
                  since: state.lastId === null ? 0 : state.lastId, ref: "sub" });
        emit("hello", msg);
      } else if (msg.type === "batch") msg.events.forEach(onEvent);
      else if ((typeof msg.id === "number" || msg.unsaved === true) && msg.v === undefined) onEvent(msg);
      else emit("reply:" + msg.type, msg);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      setState("reconnecting", "conn_reconnecting");
      setTimeout(connect, state.delay);
      state.delay = Math.min(state.delay * 2, 10000);
    };
  }
  SW.on("reply:error", (msg) => {
    if (msg.ref && /^(ack|act)-/.test(String(msg.ref))) SW.toast(SW.t("error", { msg: msg.message }));
  });

  setLang(params.get("lang") || localStorage.getItem("sw.lang") || "zh");
  refilter();
  document.addEventListener("DOMContentLoaded", () => {  // after the other console scripts have hooked in
    SW.showTab("queue");
    if (!token) setState("error", "conn_notoken"); else connect();
  });
})();
