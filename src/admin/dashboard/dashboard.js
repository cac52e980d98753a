// capgate dashboard: reads /status, /history, /policy and /conflicts and draws them.
// Plain script, no libraries, no build step. Values reach the page through textContent
// only (never innerHTML), so nothing a database returned can become markup.
"use strict";

const REFRESH_MS = 2000;
const SLOW_REFRESH_MS = 10000;
let token = sessionStorage.getItem("capgate-token") || "";
let lastSlow = 0;

// A token given in the address (#token=...) is taken once and removed from the address bar.
(function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("capgate-token", token);
    history.replaceState(null, "", location.pathname);
  }
})();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms.toFixed(1) + " ms");
const fmtCount = (n) => (n === null || n === undefined ? "–" : String(n));
const fmtRate = (r) => (r === null || r === undefined ? "–" : r.toFixed(1) + " rows/s");

class Unauthorized extends Error {}

async function getJson(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function setText(id, text, attrs) {
  const e = document.getElementById(id);
  e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
}

function renderHeader(s) {
  setText("site", s.site);
  const p = s.primary;
  setText("primary", p.state + (p.rtt_ms != null ? " · " + fmtMs(p.rtt_ms) : ""), { "data-state": p.state, class: "badge " + p.state });
  document.getElementById("primary").title = p.address + (p.last_error ? " — last error: " + p.last_error : "");
  setText("policy-version", "v" + s.policy_version);
  setText("sessions", String(s.client_connections), { "data-sessions": s.client_connections });
  const u = s.unknown_statements;
  setText("unknown", u.relayed + " relayed, " + u.refused + " refused");
}

function figure(label, value, attr, raw) {
  const b = el("b", {}, value);
  if (attr) b.setAttribute(attr, raw === null || raw === undefined ? "" : String(raw));
  return el("div", {}, el("span", {}, label), b);
}

function replicaCard(r, samples) {
  const card = el("article", {
    class: "replica",
    "data-replica": r.name,
    "data-state": r.state,
    "data-lag": r.lag_seconds === null ? "" : r.lag_seconds.toFixed(3),
    "data-pending": r.pending_rows === null ? "" : r.pending_rows,
  });
  card.append(el("h3", {}, r.name, el("span", { class: "badge " + r.state }, r.state), el("span", { class: "note" }, "for " + fmtSeconds(r.state_for_seconds))));
  card.append(
    el("div", { class: "figures" },
      figure("round trip", r.state === "partitioned" ? "–" : fmtMs(r.rtt_ms), "data-rtt", r.rtt_ms),
      figure("lag", fmtSeconds(r.lag_seconds), "data-lag", r.lag_seconds),
      figure("pending rows", fmtCount(r.pending_rows), "data-pending", r.pending_rows),
      figure("drain rate", fmtRate(r.drain_rate), "data-drain", r.drain_rate),
      figure("conflicts", fmtCount(r.conflicts), "data-conflicts", r.conflicts),
      figure("shipping", r.shipping, "data-shipping", r.shipping)));
  for (const p of r.problems || []) card.append(el("p", { class: "problem", "data-problem": "" }, "misconfigured: " + p));
  if (r.state !== "healthy" && r.last_error) card.append(el("p", { class: "error" }, "last error: " + r.last_error));
  if (r.shipping_error) card.append(el("p", { class: "error" }, "shipper: " + r.shipping_error));
  const canvas = el("canvas", { width: 800, height: 140, "aria-label": "lag and round trip of " + r.name });
  card.append(canvas, el("div", { class: "legend" },
    el("i", { style: "background:#2b6cb0" }), "lag (s)", el("i", { style: "background:#9ca3af" }), "round trip (ms)",
    el("i", { style: "background:#fecaca;height:8px" }), "partitioned"));
  requestAnimationFrame(() => drawChart(canvas, samples || []));
  return card;
}

// Lag (left scale) and round trip (right scale) over the kept history; partitioned
// stretches shaded.
function drawChart(canvas, samples) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  if (samples.length < 2) {
    ctx.fillStyle = "#6b7280";
    ctx.fillText("collecting samples…", pad, h / 2);
    return;
  }
  const t0 = samples[0].t, t1 = samples[samples.length - 1].t;
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - 2 * pad);
  for (let i = 0; i < samples.length - 1; i++) {
    if (samples[i].state === "partitioned" || samples[i].state === "healing") {
      ctx.fillStyle = samples[i].state === "partitioned" ? "#fee2e2" : "#dbeafe";
      ctx.fillRect(x(samples[i].t), 4, Math.max(1, x(samples[i + 1].t) - x(samples[i].t)), h - pad);
    }
  }
  const series = (key, color, unit) => {
    const values = samples.map((s) => s[key]).filter((v) => v !== null && v !== undefined);
    const max = Math.max(1, ...values) * 1.1;
    const y = (v) => h - pad - (v / max) * (h - pad - 8);
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    for (const s of samples) {
      // A partitioned replica's round trip is its last one before the cut: not drawn.
      const v = key === "rtt_ms" && s.state === "partitioned" ? null : s[key];
      if (v === null || v === undefined) { started = false; continue; }
      if (started) ctx.lineTo(x(s.t), y(v)); else ctx.moveTo(x(s.t), y(v));
      started = true;
    }
    ctx.stroke();
    return max / 1.1 + " " + unit;
  };
  const rttMax = series("rtt_ms", "#9ca3af", "ms");
  const lagMax = series("lag_seconds", "#2b6cb0", "s");
  ctx.fillStyle = "#6b7280";
  ctx.fillText("max lag " + Number.parseFloat(lagMax).toFixed(1) + " s, max rtt " + Number.parseFloat(rttMax).toFixed(1) + " ms", pad, 14);
  ctx.fillText(Math.round(t1 - t0) + " s ago", pad, h - 8);
  ctx.fillText("now", w - pad - 18, h - 8);
}

function renderReplicas(s, history) {
  const box = document.getElementById("replicas");
  if (!s.replicas.length) return;
  box.replaceChildren(...s.replicas.map((r) => replicaCard(r, (history.replicas || {})[r.name])));
}

function renderTables(s) {
  const rows = [];
  for (const r of s.replicas) {
    for (const t of r.tables) {
      rows.push(el("tr", { "data-replica": r.name, "data-table": t.table, "data-mode": t.mode },
        el("td", {}, r.name), el("td", {}, t.table), el("td", { class: "mode " + t.mode }, t.mode),
        el("td", { class: "num" }, fmtSeconds(t.lag_seconds)), el("td", { class: "num" }, fmtCount(t.pending_rows))));
    }
  }
  document.querySelector("#tables tbody").replaceChildren(...rows);
}

function renderPolicy(p) {
  setText("policy-file", (p.file ? "file " + p.file : "no policy file: every table is local") +
    " · version " + p.version + " · default " + p.default + " · unknown statements: " + p.unknown);
  const rows = p.rules.map((r, i) => el("tr", { "data-match": r.match, "data-mode": r.mode },
    el("td", { class: "num" }, i + 1), el("td", {}, r.match), el("td", { class: "mode " + r.mode }, r.mode),
    el("td", {}, r.options), el("td", { class: "num" }, r.line || "")));
  rows.push(el("tr", { "data-match": "(default)", "data-mode": p.default },
    el("td", {}), el("td", {}, "(default)"), el("td", { class: "mode " + p.default }, p.default), el("td", {}), el("td", {})));
  document.querySelector("#policy tbody").replaceChildren(...rows);
}

function renderConflicts(listing) {
  const box = document.getElementById("conflicts");
  const items = [];
  for (const [replica, why] of listing.errors) {
    items.push(el("p", { class: "error" }, "the conflicts recorded on replica " + replica + " cannot be read now: " + why));
  }
  for (const c of listing.conflicts) {
    const r = c.record;
    const summary = el("summary", {}, "#" + c.id + " on " + c.replica + " · " + (r.at || "") + " · " +
      [].concat(r.tables || r.table || []).join(", ") + " · " + (r.kind || r.sqlstate || "") + " · " + (r.resolution || "") +
      (r.resolved_at ? " · resolved" : ""));
    const body = [];
    for (const [k, v] of Object.entries(r)) {
      if (["id", "at", "tables", "resolution"].includes(k)) continue;
      body.push(el("div", {}, el("b", {}, k), el("pre", {}, typeof v === "string" ? v : JSON.stringify(v, null, 2))));
    }
    items.push(el("details", { class: "conflict", "data-replica": c.replica, "data-id": c.id }, summary, ...body));
  }
  if (items.length) box.replaceChildren(...items);
  else box.replaceChildren(el("p", { class: "empty" }, "None recorded."));
}

async function refresh() {
  const updated = document.getElementById("updated");
  try {
    const [s, history] = await Promise.all([getJson("status"), getJson("history")]);
    renderHeader(s);
    renderReplicas(s, history);
    renderTables(s);
    if (Date.now() - lastSlow > SLOW_REFRESH_MS) {
      lastSlow = Date.now();
      const [p, c] = await Promise.all([getJson("policy"), getJson("conflicts?limit=20")]);
      renderPolicy(p);
      renderConflicts(c);
    }
    document.getElementById("token-form").hidden = true;
    updated.textContent = "updated " + new Date().toLocaleTimeString();
    updated.setAttribute("data-ok", "true");
  } catch (e) {
    if (e instanceof Unauthorized) {
      document.getElementById("token-form").hidden = false;
      updated.textContent = "needs the admin token";
    } else {
      updated.textContent = "cannot reach capgate: " + e.message;
    }
    updated.setAttribute("data-ok", "false");
  }
  setTimeout(refresh, REFRESH_MS);
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("capgate-token", token);
  lastSlow = 0;
});

refresh();
