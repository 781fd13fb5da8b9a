// streamwatch console: Audience (submissions with replies/rejections, live Q&A), Search, Models (admin).
"use strict";
(function () {
  const SW = window.SW; const $ = SW.$; const el = SW.el; const state = SW.state;

  // --- audience -------------------------------------------------------------------------------------
  function addSubmission(ev) {
    const li = el("li", "sub" + (ev.type === "rejected" ? " rejected" : "")); li.dataset.id = ev.id; li.dataset.type = ev.type;
    li.dataset.submission = ev.submission;
    const img = el("img"); img.alt = "";
    if (ev.image) img.src = SW.frameUrl(ev.image); else img.style.visibility = "hidden";
    li.appendChild(img);
    const box = el("div");
    box.appendChild(el("div", "who", ev.user || ev.submitter));
    box.appendChild(el("div", "text", ev.type === "reply" ? ev.text : SW.t("aud_rejected", { reason: ev.reason }) + (ev.message ? " — " + ev.message : "")));
    box.appendChild(el("div", "meta", [ev.stream, SW.clock(ev.at), ev.submitter, ev.persona, ev.model].filter(Boolean).join(" · ")));
    li.appendChild(box);
    const list = $("aud-list"); list.insertBefore(li, list.firstChild);
  }
  SW.on("reply", addSubmission);
  SW.on("rejected", addSubmission);
  SW.on("answer", (ev) => {
    const li = el("li", "qa"); li.dataset.id = ev.id;
    li.appendChild(el("div", "q", (ev.asker || "") + "：" + ev.question));
    li.appendChild(el("div", "a", ev.text));
    li.appendChild(el("div", "meta", [ev.stream, SW.clock(ev.at), ev.model].filter(Boolean).join(" · ")));
    const list = $("qa-list"); list.insertBefore(li, list.firstChild);
  });
  $("ask-form").onsubmit = (e) => {
    e.preventDefault();
    const q = $("ask-q").value.trim(); const stream = $("ask-stream").value;
    if (!q || !stream) return;
    SW.send({ type: "ask", stream: stream, question: q, ref: SW.ref("ask") });
    $("ask-q").value = "";
  };
  SW.on("reply:accepted", (msg) => { if (msg.question) $("ask-status").textContent = SW.t("ask_accepted"); });
  SW.on("reply:error", (msg) => {
    const ref = String(msg.ref || "");
    if (ref.startsWith("ask-")) $("ask-status").textContent = SW.t("error", { msg: msg.message });
    if (ref.startsWith("sw-")) switchResult("error", SW.t("error", { msg: msg.message }));
  });

  // --- search: frames by text with the encoder (/search), else events by OCR text and tags ------------
  $("search-form").onsubmit = async (e) => {
    e.preventDefault();
    const q = $("search-q").value.trim(); const stream = $("search-stream").value;
    const out = $("search-results"); out.textContent = "";
    if (!q) return;
    let r = null;
    try { r = await SW.api("/search?q=" + encodeURIComponent(q) + (stream ? "&stream=" + encodeURIComponent(stream) : "") + "&limit=24"); }
    catch (err) { r = null; }
    if (r && r.ok) {
      const body = await r.json();
      $("search-mode").textContent = SW.t("search_encoder"); $("search-mode").dataset.mode = "encoder";
      body.hits.forEach((h) => hit(out, h.thumb, h.stream, h.offset, (h.labels || []).join(", ") + " · " + h.score.toFixed(3)));
    } else {
      $("search-mode").textContent = SW.t("search_ocr"); $("search-mode").dataset.mode = "events";
      const needle = q.toLowerCase();
      const found = [];
      state.alerts.forEach((a) => {
        const ev = a.ev; const ocr = (ev.evidence && ev.evidence.text) || "";
        if ((!stream || ev.stream === stream) && (ocr + " " + ev.message).toLowerCase().includes(needle)) found.push([ev, ocr || ev.message, ev.evidence.frame]);
      });
      state.scenes.forEach((ev) => {
        const tags = (ev.tags || []).join(", ");
        if ((!stream || ev.stream === stream) && tags.toLowerCase().includes(needle)) found.push([ev, tags, ev.frame]);
      });
      found.sort((a, b) => b[0].id - a[0].id).slice(0, 60).forEach(([ev, text, frame]) => {
        const li = hit(out, frame, ev.stream, ev.offset, text);
        if (ev.type === "alert") { li.style.cursor = "pointer"; li.onclick = () => SW.select(ev.id); }
      });
    }
    if (!out.children.length) out.appendChild(el("li", null, SW.t("search_none")));
  };
  function hit(out, thumb, stream, offset, text) {
    const li = el("li", "hit"); const img = el("img"); img.alt = "";
    if (thumb) img.src = SW.frameUrl(thumb);
    li.appendChild(img); li.appendChild(el("div", null, stream + " · " + SW.hms(offset))); li.appendChild(el("div", "meta", text));
    out.appendChild(li);
    return li;
  }

  // --- models (admin) ---------------------------------------------------------------------------------
  async function loadModels() {
    if (state.role !== "admin") return;
    let r; try { r = await SW.api("/models"); } catch (e) { return; }
    const tbody = $("models-table").tBodies[0]; tbody.textContent = "";
    if (!r.ok) { $("sw-status").textContent = SW.t("m_none"); return; }
    const info = await r.json();
    Object.entries(info.chains || {}).forEach(([role, chain]) => {
      const tr = el("tr"); tr.dataset.role = role; tr.appendChild(el("td", null, role));
      const td = el("td", "chain");
      chain.forEach((m, i) => {
        if (i) td.appendChild(document.createTextNode(" → "));
        const br = (info.breakers || {})[m];
        td.appendChild(el(i ? "span" : "b", null, m + (br && br !== "closed" ? " (" + br + ")" : "")));
      });
      tr.appendChild(td); tbody.appendChild(tr);
    });
    const req = $("models-requests").tBodies[0]; req.textContent = "";
    Object.entries(info.requests || {}).forEach(([model, outcomes]) => {
      const tr = el("tr"); tr.appendChild(el("td", null, model));
      tr.appendChild(el("td", null, Object.entries(outcomes).map(([o, n]) => o + " " + n).join(" · "))); req.appendChild(tr);
    });
    const health = $("models-health"); health.textContent = "";  // the VLM tier failing / working again, newest first
    (info.health || []).forEach((n) => {
      health.appendChild(el("li", n.active ? "failing" : "recovered", SW.clock(new Date(n.at * 1000).toISOString()) + "  " + (n.active ? "⚠ " : "✓ ") + n.reason));
    });
    if (!(info.health || []).length) health.appendChild(el("li", "muted", SW.t("m_health_none")));
    const sel = $("sw-model"); (info.models || []).forEach((m) => SW.addOption(sel, m));
  }
  $("switch-form").onsubmit = (e) => {
    e.preventDefault();
    const model = $("sw-model").value; if (!model) return;
    SW.send({ type: "switch_model", role: $("sw-role").value, model: model, ref: SW.ref("sw") });
    $("sw-status").textContent = SW.t("m_switching", { model: model }); $("sw-status").dataset.result = "pending";
  };
  function switchResult(result, text) {  // the latest in the status line, every one in the log below it
    $("sw-status").textContent = text; $("sw-status").dataset.result = result;
    const li = el("li", result, SW.clock(new Date().toISOString()) + "  " + text); const log = $("sw-log"); log.insertBefore(li, log.firstChild);
  }
  SW.on("reply:switched", (msg) => {
    switchResult("switched", SW.t("m_switched", { role: msg.role, old: msg.old, model: msg.model, s: msg.seconds })); loadModels();
  });
  SW.on("tab", (tab) => { if (tab === "models") loadModels(); });
  setInterval(() => { if (document.body.dataset.tab === "models") loadModels(); }, 5000);
})();
