// gamed operator console: plain JS, no build step, nothing loaded from elsewhere.
// Reads /stats, /stats/rooms, /stats/users/{id}, /analytics/..., /admin/... on this
// port; every action is a POST to the admin API with the token kept in this tab's
// sessionStorage. Text from the server is always set with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "gamed-admin-token";
const HISTORY = 120; // points kept per chart: 10 minutes at one poll per 5 s
const POLL_MS = 5000;
const $ = (id) => document.getElementById(id);

const state = {
  view: "overview",
  history: { connections: [], mps: [], p95: [] },
  lastSnapshot: 0, // the metrics plugin's last snapshot charted (its timestamp)
  rooms: { offset: 0, limit: 50, sort: "users", order: "desc" },
  timer: null,
};

// -- the token and requests -------------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function showTokenState() {
  $("token-state").textContent = token() ? "token set (this tab)" : "no token: read-only";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  let resp;
  try {
    resp = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  } catch (e) {
    banner("server unreachable: " + e.message);
    throw e;
  }
  banner("");
  let body = null;
  try { body = await resp.json(); } catch (_e) { body = null; }
  return { status: resp.status, ok: resp.ok, body };
}

function banner(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

// -- formatting -----------------------------------------------------------------------------

function dur(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function when(epoch) {
  if (!epoch) return "–";
  return new Date(epoch * 1000).toLocaleTimeString();
}

function ago(epoch, now) { return epoch ? dur(now - epoch) + " ago" : "–"; }

function row(cells, attrs = {}) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "–" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...rows);
  if (!rows.length && empty) {
    const tr = row([empty]);
    tr.firstChild.colSpan = 9;
    tr.className = "note";
    tbody.appendChild(tr);
  }
}

function json(el, value) { el.textContent = JSON.stringify(value, null, 2); }

// -- a small line chart of our own ------------------------------------------------------

function chart(canvas, points) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#667";
  ctx.font = "11px system-ui, sans-serif";
  if (points.length < 2) { ctx.fillText("collecting…", pad, h / 2); return; }
  const max = Math.max(1e-9, ...points);
  const step = (w - 2 * pad) / (HISTORY - 1);
  const x0 = w - pad - step * (points.length - 1);
  ctx.strokeStyle = "#d8dce2";
  ctx.beginPath(); ctx.moveTo(pad, h - pad); ctx.lineTo(w - pad, h - pad); ctx.stroke();
  ctx.strokeStyle = "#2962c4";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  points.forEach((v, i) => {
    const x = x0 + i * step, y = h - pad - (v / max) * (h - 2 * pad - 12);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillText("max " + (Math.round(max * 100) / 100), pad, 11);
}

function push(series, value) {
  series.push(Number(value) || 0);
  if (series.length > HISTORY) series.shift();
}

// -- overview and nodes (both from /stats) ------------------------------------------------------

async function pollStats() {
  const r = await api("/stats");
  if (!r.ok) return;
  const s = r.body, m = (s.metrics && s.metrics.collected) ? s.metrics : null;
  $("hdr-version").textContent = s.version;
  $("ov-connections").textContent = s.connections;
  $("ov-sessions").textContent = s.sessions;
  $("ov-rooms").textContent = s.rooms.count;
  $("ov-games").textContent = s.games ? s.games.in_progress + " live / " + s.games.active : "off";
  $("ov-mps").textContent = m ? m.messages_per_second.toFixed(1) : "–";
  $("ov-p95").textContent = m ? m.response_time_ms.p95.toFixed(3) + " ms" : "–";
  $("ov-rss").textContent = m ? m.memory_mb.toFixed(1) + " MB" : "–";
  $("ov-cpu").textContent = m ? m.cpu_percent.toFixed(1) + " %" : "–";
  $("ov-uptime").textContent = dur(s.uptime_seconds);
  $("ov-version").textContent = s.version;
  // One chart point per metrics snapshot (every collection_interval); without the
  // metrics plugin, one per poll.
  if (!m || m.timestamp > state.lastSnapshot) {
    if (m) state.lastSnapshot = m.timestamp;
    push(state.history.connections, m ? m.connections : s.connections);
    push(state.history.mps, m ? m.messages_per_second : 0);
    push(state.history.p95, m ? m.response_time_ms.p95 : 0);
  }
  chart($("chart-connections"), state.history.connections);
  chart($("chart-mps"), state.history.mps);
  chart($("chart-p95"), state.history.p95);
  fill($("nodes-body"), [row([
    location.host + " (this node)", s.version, dur(s.uptime_seconds), s.connections,
    s.sessions, s.rooms.count, s.draining ? "draining" : "serving",
  ])]);
}

// The last ten minutes, from the metrics plugin's /history (404: the plugin is off).
async function seedHistory() {
  const r = await api("/history");
  if (!r.ok || !r.body || !Array.isArray(r.body.points)) return;
  const f = r.body.fields;
  const at = (name) => f.indexOf(name);
  for (const p of r.body.points.slice(-HISTORY)) {
    push(state.history.connections, p[at("connections")]);
    push(state.history.mps, p[at("messages_per_second")]);
    push(state.history.p95, p[at("p95_ms")]);
    state.lastSnapshot = p[at("timestamp")];
  }
}

// -- rooms -------------------------------------------------------------------------------------

async function loadRooms() {
  const q = state.rooms;
  const filters = ["busy", "full", "game"].filter((f) => $("rooms-filter-" + f).checked);
  const params = new URLSearchParams({
    offset: q.offset, limit: q.limit, sort: q.sort, order: q.order,
    filter: filters.join(","), q: $("rooms-search").value.trim(),
  });
  const r = await api("/stats/rooms?" + params);
  if (!r.ok) { $("rooms-summary").textContent = (r.body && r.body.error) || "error " + r.status; return; }
  const b = r.body, now = Date.now() / 1000;
  $("rooms-summary").textContent = b.matched + " of " + b.total + " rooms";
  $("rooms-summary").dataset.total = b.total;
  $("rooms-summary").dataset.matched = b.matched;
  fill($("rooms-body"), b.rooms.map((room) => row([
    room.room_id, room.user_count + " / " + b.max_users, room.messages,
    ago(room.last_activity, now), dur(now - room.created_at), room.game || "–",
  ], { "data-room": room.room_id })), "no rooms match");
  const pages = Math.max(1, Math.ceil(b.matched / b.limit));
  $("rooms-page").textContent = "page " + (Math.floor(b.offset / b.limit) + 1) + " of " + pages;
  $("rooms-prev").disabled = b.offset <= 0;
  $("rooms-next").disabled = b.offset + b.limit >= b.matched;
  document.querySelectorAll("#rooms-table th[data-sort]").forEach((th) => {
    th.classList.toggle("sorted", th.dataset.sort === q.sort);
    th.classList.toggle("asc", q.order === "asc");
  });
}

async function loadRoom(id) {
  $("room-title").textContent = "Room " + id;
  const r = await api("/stats/rooms/" + encodeURIComponent(id));
  if (r.status === 404) {
    $("room-title").textContent = "Room " + id + " (gone: no members)";
    return;
  }
  if (!r.ok) { banner((r.body && r.body.error) || "error " + r.status); return; }
  const b = r.body, g = b.game;
  $("room-users").textContent = b.user_count + " / " + b.max_users;
  $("room-messages").textContent = b.messages;
  $("room-game-status").textContent = g ? g.status : "no game";
  $("room-round").textContent = g && g.round ? g.round + " / " + g.round_limit : "–";
  let turn = "–";
  if (g && g.current_turn !== undefined && g.current_turn !== null) {
    const p = (g.players || []).find((x) => x.user_id === g.current_turn);
    turn = (p ? p.nickname + " " : "") + "(" + g.current_turn + ")";
  } else if (g && g.status === "InProgress") {
    turn = "hidden (token)";
  }
  $("room-turn").textContent = turn;
  $("room-time-left").textContent = g && g.turn_time_left !== null ? g.turn_time_left.toFixed(1) + "s" : "–";
  const note = $("room-members-note");
  note.hidden = b.members !== null;
  note.textContent = b.members_hidden || "";
  const players = new Map(((g && g.players) || []).map((p) => [p.user_id, p]));
  fill($("room-members"), (b.members || []).map((mb) => {
    const link = document.createElement("a");
    link.href = "#/users/" + mb.user_id;
    link.textContent = mb.user_id;
    const p = players.get(mb.user_id);
    const game = p ? "score " + p.score + (p.ready ? ", ready" : "") + (p.away ? ", away" : "") : "–";
    return row([link, mb.nickname, mb.transport, mb.away ? "away" : dur(mb.connected_for), game]);
  }));
  const a = await api("/analytics/rooms/" + encodeURIComponent(id));
  $("room-analytics").textContent = a.ok ? JSON.stringify(a.body, null, 2)
    : (a.status === 404 && !(a.body && a.body.error && a.body.error.includes("no analytics"))
      ? "analytics is off" : (a.body && a.body.error) || "error " + a.status);
}

// -- users ---------------------------------------------------------------------------------------

async function loadUser(id) {
  $("user-result").hidden = false;
  $("user-title").textContent = "User " + id;
  $("user-title").dataset.user = id;
  const [s, sec, an] = await Promise.all([
    api("/stats/users/" + id), api("/admin/users/" + id), api("/analytics/users/" + id),
  ]);
  const show = (el, r) => {
    if (r.ok) json(el, r.body);
    else el.textContent = (r.body && r.body.error) || "error " + r.status;
  };
  show($("user-session"), s);
  show($("user-security"), sec);
  show($("user-analytics"), an);
}

// -- security -------------------------------------------------------------------------------------

async function loadSecurity() {
  const st = await api("/stats");
  if (st.ok && st.body.security) {
    const rows = [];
    for (const [rule, actions] of Object.entries(st.body.security.decisions)) {
      for (const [action, n] of Object.entries(actions)) rows.push(row([rule, action, n]));
    }
    fill($("sec-decisions"), rows, "no decisions yet");
  }
  const r = await api("/admin/blocks");
  const note = $("sec-note");
  if (!r.ok) {
    note.hidden = false;
    note.textContent = "Blocks and recent decisions need the admin token: " +
      ((r.body && r.body.error) || "error " + r.status);
    for (const id of ["sec-blocks-users", "sec-blocks-ips", "sec-recent"]) fill($(id), []);
    return;
  }
  note.hidden = true;
  const b = r.body;
  const expires = (x) => x.permanent ? "never (ban)" : "in " + dur(x.remaining_seconds);
  const lift = (label, action) => {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = label;
    btn.addEventListener("click", action);
    return btn;
  };
  fill($("sec-blocks-users"), b.users.map((x) => row([
    x.user_id, x.reason, when(x.since), expires(x),
    lift("Unban", () => act("unban", "POST", "/admin/users/" + x.user_id + "/unblock", null,
      "Lift the block on user " + x.user_id + "?")),
  ], { "data-user": x.user_id })), "none");
  fill($("sec-blocks-ips"), b.ips.map((x) => row([
    x.ip, x.reason, when(x.since), expires(x),
    lift("Unblock", () => act("unblock", "POST", "/admin/ips/" + encodeURIComponent(x.ip) + "/unblock", null,
      "Unblock address " + x.ip + "?")),
  ], { "data-ip": x.ip })), "none");
  fill($("sec-recent"), b.recent.slice(0, 50).map((x) => row([
    when(x.at), x.rule, x.action, x.user_id, x.ip, x.detail,
  ])), "none yet");
}

// -- actions: all through /admin/, each behind a confirmation ------------------------------------------

function confirmDialog(text) {
  const dlg = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
  });
}

async function act(name, method, path, body, question) {
  const out = $("action-result");
  if (!(await confirmDialog(question))) {
    out.className = ""; out.textContent = name + ": cancelled";
    return;
  }
  const r = await api(path, {
    method, headers: { "Content-Type": "application/json" },
    body: body === null ? undefined : JSON.stringify(body),
  });
  out.className = r.ok ? "ok" : "error";
  out.textContent = name + " → " + r.status + " " +
    (r.ok ? JSON.stringify(r.body) : ((r.body && r.body.error) || ""));
  if (state.view === "security") loadSecurity();
  if (state.view === "users" && $("user-title").dataset.user) loadUser($("user-title").dataset.user);
}

function userAction(name, suffix, id, withReason) {
  id = String(id).trim();
  if (!/^\d{1,10}$/.test(id)) { $("action-result").className = "error"; $("action-result").textContent = "a user id is digits"; return; }
  const reason = $("act-reason").value.trim();
  const body = withReason && reason ? { reason } : null;
  act(name, "POST", "/admin/users/" + id + "/" + suffix, body, name + " user " + id + "?");
}

function ipAction(name, suffix) {
  const ip = $("act-ip").value.trim();
  if (!ip) return;
  let body = null;
  if (suffix === "block") {
    const d = $("act-duration").value.trim();
    body = { duration: d ? Number(d) : null };
    const reason = $("act-reason").value.trim();
    if (reason) body.reason = reason;
  }
  act(name, "POST", "/admin/ips/" + encodeURIComponent(ip) + "/" + suffix, body, name + " " + ip + "?");
}

// -- navigation -----------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  let view = parts[0] || "overview";
  let arg = parts[1];
  if (view === "rooms" && arg) view = "room";
  if (!$("view-" + view)) view = "overview";
  state.view = view;
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + view; });
  document.querySelectorAll("nav a[data-view]").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === view || (view === "room" && a.dataset.view === "rooms"));
  });
  if (view === "users" && arg) $("user-id-input").value = arg;
  clearInterval(state.timer);
  const refresh = () => {
    if (view === "rooms") return loadRooms();
    if (view === "room") return loadRoom(arg);
    if (view === "users") return arg ? loadUser(arg) : null;
    if (view === "security") return loadSecurity();
    return null;
  };
  refresh();
  if (view !== "users") state.timer = setInterval(refresh, view === "room" ? 1000 : 3000);
}

function wire() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token-input").value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $("token-input").value = "";
    showTokenState();
    route();
  });
  $("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showTokenState(); route(); });
  const reRooms = () => { state.rooms.offset = 0; loadRooms(); };
  $("rooms-search").addEventListener("input", reRooms);
  for (const f of ["busy", "full", "game"]) $("rooms-filter-" + f).addEventListener("change", reRooms);
  $("rooms-prev").addEventListener("click", () => { state.rooms.offset = Math.max(0, state.rooms.offset - state.rooms.limit); loadRooms(); });
  $("rooms-next").addEventListener("click", () => { state.rooms.offset += state.rooms.limit; loadRooms(); });
  document.querySelectorAll("#rooms-table th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    const q = state.rooms;
    if (q.sort === th.dataset.sort) q.order = q.order === "asc" ? "desc" : "asc";
    else { q.sort = th.dataset.sort; q.order = q.sort === "room_id" ? "asc" : "desc"; }
    q.offset = 0;
    loadRooms();
  }));
  $("rooms-body").addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-room]");
    if (tr) location.hash = "#/rooms/" + tr.dataset.room;
  });
  $("user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("user-id-input").value.trim();
    if (/^\d{1,10}$/.test(id)) location.hash = "#/users/" + id;
  });
  const current = () => $("user-title").dataset.user;
  $("user-kick-btn").addEventListener("click", () => userAction("kick", "kick", current(), false));
  $("user-ban-btn").addEventListener("click", () => userAction("ban", "ban", current(), true));
  $("user-unblock-btn").addEventListener("click", () => userAction("unban", "unblock", current(), false));
  $("act-ban").addEventListener("click", () => userAction("ban", "ban", $("act-user-id").value, true));
  $("act-unban").addEventListener("click", () => userAction("unban", "unblock", $("act-user-id").value, false));
  $("act-kick").addEventListener("click", () => userAction("kick", "kick", $("act-user-id").value, false));
  $("act-block").addEventListener("click", () => ipAction("block", "block"));
  $("act-unblock").addEventListener("click", () => ipAction("unblock", "unblock"));
  $("act-reload").addEventListener("click", () => act("reload", "POST", "/admin/reload", null, "Reload the config file?"));
  window.addEventListener("hashchange", route);
}

wire();
showTokenState();
route();
seedHistory().catch(() => null).then(pollStats);
setInterval(pollStats, POLL_MS);
window.gamedConsole = { state, route };
