// The play page: a small real client on gamed.js (docs/clients.md). No framework.
import { GamedClient } from "./gamed.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const client = new GamedClient(params.get("ws") || undefined);
window.gamed = client; // for the console (and the browser test)

// What the page knows. The protocol gives a count on RoomJoinSuccess, not a member list:
// members are who we see join, speak or play.
const members = new Map(); // user_id -> nickname
let game = null; // {status, players: [{user_id, nickname, score, ready, position}], current_turn, round}
let shownRoom = null; // the room the members and game above belong to

const nick = (id) => (members.get(id) ?? `user ${id}`) + ` (${id})`;
const me = () => client.userId;
const inRoom = () => client.roomId !== null;

// -- rendering -------------------------------------------------------------------------

function line(list, text, cls, max = 200) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  list.append(li);
  while (list.children.length > max) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
  return li;
}

const system = (text) => line($("chat-log"), text, "system");

let lastErrorTimer = null;

function showError(code, message, request) {
  const text = `${code || "—"} ${message}${request ? ` (${request})` : ""}`;
  const li = line($("errors"), text, "error");
  li.dataset.code = String(code);
  $("errors-panel").classList.add("has-errors");
  // The newest error also shows at the top for a few seconds (the list is far down on a phone).
  const banner = $("last-error");
  banner.textContent = text;
  banner.hidden = false;
  clearTimeout(lastErrorTimer);
  lastErrorTimer = setTimeout(() => (banner.hidden = true), 6000);
}

function renderStatus() {
  const s = $("status");
  s.dataset.state = client.state;
  s.textContent = client.state === "open" && me() !== null ? "connected" : client.state;
  $("whoami").textContent = me() !== null && client.state === "open" ? nick(me()) : "";
  const open = client.state === "open" && me() !== null;
  $("connect-btn").disabled = client.state === "open" || client.state === "connecting";
  $("disconnect-btn").disabled = client.state === "idle" || client.state === "closed";
  $("join-btn").disabled = !open;
  $("leave-btn").disabled = !open || !inRoom();
  $("chat-input").disabled = $("chat-send").disabled = !open || !inRoom();
  renderRoom();
  renderGame();
}

function renderRoom() {
  $("room-name").textContent = inRoom() ? String(client.roomId) : "—";
  const ul = $("members");
  ul.replaceChildren();
  if (!inRoom()) return;
  for (const [id, name] of members) {
    const li = document.createElement("li");
    li.dataset.userId = String(id);
    li.textContent = `${name} (${id})${id === me() ? " — you" : ""}`;
    ul.append(li);
  }
  $("members-hint").hidden = Number($("user-count").textContent) <= members.size;
}

function renderGame() {
  const open = client.state === "open" && inRoom();
  const active = game && game.status !== "Finished";
  const mine = game?.players.find((p) => p.user_id === me());
  const myTurn = game?.status === "InProgress" && game.current_turn === me();
  $("start-btn").disabled = !open || Boolean(active);
  $("ready-btn").disabled = !open || game?.status !== "Waiting" || !mine;
  $("ready-btn").textContent = game?.status === "Waiting" && mine?.ready ? "Not ready" : "Ready";
  for (const id of ["move-btn", "attack-btn", "use-btn"]) $(id).disabled = !open || !myTurn;
  $("game-status").textContent = game ? game.status : "no game";
  $("round").textContent = game && game.round ? String(game.round) : "—";
  $("turn").textContent = game?.current_turn != null ? nick(game.current_turn) : "—";
  $("your-turn").hidden = !myTurn;
  $("players").hidden = !game?.players.length;
  const tbody = $("players").tBodies[0];
  tbody.replaceChildren();
  const select = $("attack-target");
  const chosen = select.value;
  select.replaceChildren();
  for (const p of game?.players ?? []) {
    const tr = tbody.insertRow();
    tr.dataset.userId = String(p.user_id);
    if (p.user_id === game.current_turn) tr.className = "turn";
    const pos = p.position ? `${p.position.x}, ${p.position.y} ↻${p.position.direction}` : "—";
    for (const text of [nick(p.user_id), p.ready ? "✔" : "·", String(p.score), pos]) {
      tr.insertCell().textContent = text;
    }
    select.add(new Option(nick(p.user_id), String(p.user_id)));
  }
  // Keep the chosen target; by default the first other player.
  const options = [...select.options];
  const keep = options.find((o) => o.value === chosen) ?? options.find((o) => Number(o.value) !== me());
  if (keep) select.value = keep.value;
}

function describe(action) {
  const [kind, a] = Object.entries(action)[0];
  if (kind === "Move") return `moves to (${a.x}, ${a.y}) facing ${a.direction}`;
  if (kind === "Attack") return `attacks ${nick(a.target_id)} for ${a.damage}`;
  if (kind === "UseItem") return `uses ${a.item_id}`;
  return kind;
}

// -- server messages ----------------------------------------------------------------------

client.on("*", (type, body) => line($("frames"), `← ${JSON.stringify(body === null ? type : { [type]: body })}`));
client.on("sent", (type, body) => line($("frames"), `→ ${JSON.stringify(body === null ? type : { [type]: body })}`, "sent"));

client.on("Error", (e, { request }) => showError(e.code, e.message, request));
client.on("SystemMessage", (m) => system(`* ${m.message}`));

client.on("ConnectionAck", () => {
  members.clear();
  renderStatus();
});

client.on("RoomJoinSuccess", (m) => {
  if (m.room_id !== shownRoom) {
    shownRoom = m.room_id;
    members.clear();
    game = null;
    $("game-result").hidden = true;
  }
  members.set(me(), client.nickname ?? `user${me()}`);
  $("user-count").textContent = String(m.user_count);
  system(`* you joined room ${m.room_id} (${m.user_count} ${m.user_count === 1 ? "user" : "users"})`);
  renderStatus();
});

client.on("RoomLeaveSuccess", (m) => {
  shownRoom = null;
  members.clear();
  game = null;
  $("user-count").textContent = "0";
  system(`* you left room ${m.room_id}`);
  renderStatus();
});

client.on("UserJoinedRoom", (m) => {
  members.set(m.user_id, m.nickname);
  $("user-count").textContent = String(m.user_count);
  system(`* ${m.nickname} (${m.user_id}) joined (${m.user_count} users)`);
  renderRoom();
});

client.on("UserLeftRoom", (m) => {
  members.delete(m.user_id);
  $("user-count").textContent = String(m.user_count);
  system(`* ${m.nickname} (${m.user_id}) left (${m.user_count} users)`);
  renderRoom();
});

client.on("ChatMessage", (m) => {
  if (!members.has(m.user_id)) members.set(m.user_id, `user${m.user_id}`);
  const li = line($("chat-log"), `${nick(m.user_id)}: ${m.message}`, m.user_id === me() ? "chat mine" : "chat");
  li.dataset.userId = String(m.user_id);
  renderRoom();
});

client.on("GameStarted", (m) => {
  for (const p of m.players) members.set(p.user_id, p.nickname);
  game = { status: "Waiting", players: m.players, current_turn: null, round: 0 };
  $("game-result").hidden = true;
  system(`* game started: ${m.players.map((p) => nick(p.user_id)).join(", ")}; ready up`);
  renderRoom();
  renderGame();
});

client.on("PlayerReadyUpdate", (m) => {
  const p = game?.players.find((q) => q.user_id === m.user_id);
  if (p) p.ready = m.ready;
  system(`* ${nick(m.user_id)} is ${m.ready ? "ready" : "not ready"}`);
  renderGame();
});

client.on("GameInProgress", (m) => {
  if (!game) game = { players: [] };
  if (game.status !== "InProgress") system("* everyone is ready: the game is on");
  for (const p of game.players) p.ready = true;
  Object.assign(game, { status: "InProgress", current_turn: m.current_turn, round: m.round });
  system(`* round ${m.round}: ${nick(m.current_turn)}'s turn`);
  renderGame();
});

client.on("ActionResult", (m) => {
  const s = m.game_state;
  const newRound = game && s.status === "InProgress" && s.round !== game.round;
  game = { status: s.status, players: s.players, current_turn: s.current_turn, round: s.round };
  system(`* ${nick(m.user_id)} ${describe(m.action)}`);
  if (newRound) system(`* round ${s.round}: ${nick(s.current_turn)}'s turn`);
  renderGame();
});

client.on("GameEnded", (m) => {
  if (!game) game = { players: [] };
  game.status = "Finished";
  game.current_turn = null;
  for (const [id, score] of m.final_scores) {
    const p = game.players.find((q) => q.user_id === id);
    if (p) p.score = score;
  }
  const result = $("game-result");
  const winner = m.winner ? `Winner: ${nick(m.winner.user_id)}` : "Draw: no single winner";
  const scores = m.final_scores.map(([id, score]) => `${nick(id)} ${score}`).join(", ");
  result.textContent = `Game over. ${winner}. Scores: ${scores || "—"}`;
  result.hidden = false;
  system(`* game over: ${winner}`);
  renderGame();
});

for (const ev of ["open", "close", "reconnecting", "reconnected"]) client.on(ev, renderStatus);
client.on("reconnecting", ({ attempt, delayMs }) =>
  system(`* connection lost; reconnecting in ${(delayMs / 1000).toFixed(1)} s (try ${attempt})`),
);
client.on("reconnected", () => system("* reconnected"));

// -- user actions -----------------------------------------------------------------------------

// Server errors are shown by the "Error" listener; here only local failures (timeout, closed).
const local = (err) => {
  if (err.kind !== "server") showError(err.code, err.message, err.request);
};
const num = (id) => Number($(id).value);

// This tab's session, kept across a reload (sessionStorage is per tab): who, and which room.
const SESSION = "gamed.session";
const stored = () => JSON.parse(sessionStorage.getItem(SESSION) || "null");
const store = (changes) =>
  sessionStorage.setItem(SESSION, JSON.stringify({ ...stored(), ...changes }));

function connect(userId, nickname, token, room = null) {
  store({ userId, nickname, token, connected: true, room });
  client.connect({ userId, nickname, token }).then(
    () => {
      renderStatus();
      if (room !== null) client.joinRoom(room).catch(local); // a held seat answers it too
    },
    (err) => {
      local(err);
      store({ connected: false });
      renderStatus();
    },
  );
  renderStatus();
}

client.on("RoomJoinSuccess", (m) => store({ room: m.room_id }));
client.on("RoomLeaveSuccess", (m) => {
  if (stored()?.room === m.room_id) store({ room: null });
});
client.on("close", ({ reconnectIn }) => {
  if (reconnectIn === null) store({ connected: false }); // closed for good
});

$("connect-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  connect(num("user-id"), $("nickname").value.trim(), $("token").value.trim() || null);
});

$("disconnect-btn").addEventListener("click", () => {
  store({ connected: false });
  client.close();
  shownRoom = null;
  members.clear();
  game = null;
  renderStatus();
});

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  client.joinRoom(num("room-id")).catch(local);
});
$("leave-btn").addEventListener("click", () => client.leaveRoom().catch(local));

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("chat-input").value;
  if (!text) return;
  client.chat(text).catch(local);
  $("chat-input").value = "";
});

$("start-btn").addEventListener("click", () => client.startGame().catch(local));
$("ready-btn").addEventListener("click", () => client.toggleReady().catch(local));
$("move-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  client.move(num("move-x"), num("move-y"), num("move-dir")).catch(local);
});
$("attack-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  client.attack(num("attack-target"), Math.trunc(num("attack-damage"))).catch(local);
});
$("use-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  client.useItem($("item-id").value).catch(local);
});
$("last-error").addEventListener("click", () => ($("last-error").hidden = true));
$("errors-clear").addEventListener("click", () => {
  $("errors").replaceChildren();
  $("errors-panel").classList.remove("has-errors");
});

// A new tab gets a random identity (so two tabs are two players). A reload keeps the tab's,
// and a tab that was connected connects again and rejoins its room: a player mid-game takes
// the seat back (the server's reconnect grace). URL parameters win.
const saved = stored();
const id = params.get("user") ?? saved?.userId ?? 1000 + Math.floor(Math.random() * 9000);
$("user-id").value = String(id);
$("nickname").value = params.get("nick") ?? saved?.nickname ?? `player${id}`;
$("token").value = saved?.token ?? "";
if (params.get("room") || saved?.room) $("room-id").value = params.get("room") ?? saved.room;
renderStatus();
if (saved?.connected && !params.get("user")) {
  connect(saved.userId, saved.nickname, saved.token ?? null, saved.room ?? null);
}
