// gamed.js — a browser client for gamed over WebSocket (docs/clients.md).
//
// An ES module with no build step and no dependencies. One WebSocket text
// message is one protocol message: the same externally tagged JSON as on TCP
// (docs/protocol.md), without the 4-byte length prefix.
//
//   import { GamedClient } from "/gamed.js";
//   const c = new GamedClient();                      // ws(s)://<this host>/ws
//   c.on("ChatMessage", (m) => console.log(m.user_id, m.message));
//   await c.connect({ userId: 7, nickname: "neo" });  // resolves with ConnectionAck
//   await c.joinRoom(5);                              // resolves with RoomJoinSuccess
//   await c.chat("hello");                            // resolves with the echo
//
// Requests and replies. The protocol has no request ids, but the server handles
// a connection's messages one at a time, in order, and answers each before it
// reads the next. So every message sent waits in one queue (FIFO), and:
//   - a server `Error` is the answer to the oldest waiting request, which is
//     rejected with a GamedError{code, message};
//   - any other message settles the oldest waiting request it is the reply to,
//     matched by type (and room, and sender): see REPLIES below. Requests before
//     it that got no reply are rejected with kind "no-reply";
//   - a request with no answer within `requestTimeoutMs` is rejected with kind
//     "timeout"; one still waiting when the socket closes, with kind "closed".
// Everything received is also emitted as an event named after its type
// (`on("Error", ...)` sees every error, `on("*", (type, body) => ...)` all).
// Promises are marked handled, so an ignored `chat()` never logs "Uncaught".
//
// Reconnect. After a session was acknowledged, a socket that closes without
// close() is reopened after an exponential backoff with jitter (capped), and
// the client sends Connect again with the same user id, nickname and token,
// then RoomJoin for the room it was in (a player of a running game keeps the
// seat for the server's reconnect grace). It does not reconnect after close(),
// after a takeover (Error 409 "replaced by a new connection": another tab or
// client connected as the same user), after a refused Connect (e.g. 401 bad
// token) or a close code 1003/1007/1008 (refused or banned: retrying would not help).
//
// Heartbeats. A HeartBeat is sent every `heartbeatMs` (10 s, as the protocol
// asks) while the socket is open; an unanswered one closes the socket (and so
// reconnects), which finds dead connections a browser would not notice.

/** A rejected request: a server Error (kind "server", with its code) or a local failure. */
export class GamedError extends Error {
  constructor(code, message, kind = "server", request = null) {
    super(message);
    this.name = "GamedError";
    /** The server's error code (400, 401, 403, 404, 409, 413, 422, 429, 500, 503); 0 when local. */
    this.code = code;
    /** "server" | "timeout" | "closed" | "no-reply" */
    this.kind = kind;
    /** The type of the request that failed, e.g. "RoomJoin". */
    this.request = request;
  }
}

const DEFAULTS = {
  heartbeatMs: 10000, // 0 disables heartbeats
  requestTimeoutMs: 10000,
  reconnect: true,
  initialDelayMs: 500, // backoff: min(maxDelayMs, initialDelayMs * 2^attempt), then jitter
  maxDelayMs: 15000,
  WebSocket: globalThis.WebSocket, // injectable for tests
};

/** Close codes after which reconnecting cannot help (docs/protocol.md, WebSocket). */
const FINAL_CLOSE_CODES = new Set([1003, 1007, 1008]);

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc || !loc.host) return "ws://127.0.0.1:7080/ws";
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws`;
}

export class GamedClient {
  /**
   * @param {string} [url] the WebSocket URL; default: this page's host, path /ws
   * @param {object} [options] see DEFAULTS
   */
  constructor(url = defaultUrl(), options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
    this.state = "idle";
    this.userId = null; // set by ConnectionAck
    this.nickname = null;
    this.roomId = null; // the room we are in (RoomJoinSuccess / RoomLeaveSuccess)
    this.ready = false; // our ready flag in the room's game
    this._creds = null;
    this._acked = false; // a session was acknowledged once: reconnect from now on
    this._ws = null;
    this._pending = [];
    this._handlers = new Map();
    this._attempt = 0;
    this._retryTimer = null;
    this._heartbeatTimer = null;
    this._final = false; // no more reconnects
  }

  // -- events ---------------------------------------------------------------

  /** Listen to a server message type ("ChatMessage", "Error", ...), "*" for all, or a
   *  lifecycle event: "open", "close" ({code, reason, reconnectIn}), "reconnecting"
   *  ({attempt, delayMs}), "reconnected" (ConnectionAck), "sent" (type, body).
   *  Returns a function that removes the listener. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._handlers.get(type)?.delete(fn);
  }

  _emit(type, ...args) {
    for (const fn of [...(this._handlers.get(type) || [])]) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`gamed.js: a "${type}" listener failed`, e);
      }
    }
  }

  // -- client messages (docs/protocol.md) -------------------------------------

  /** Open the socket (if needed) and send Connect; resolves with ConnectionAck.
   *  `token` is required where the server has --auth-secret-file (docs/security.md). */
  async connect({ userId, nickname = null, token = null }) {
    this._creds = { userId, nickname, token };
    this.nickname = nickname;
    this.roomId = null; // a new session starts in no room (a held seat sends RoomJoinSuccess)
    this.ready = false;
    this._final = false;
    clearTimeout(this._retryTimer);
    if (!this._isOpen()) await this._open();
    return this._sendConnect();
  }

  /** HeartBeat; resolves with HeartBeatResponse{timestamp}. Sent on a timer anyway. */
  heartbeat() {
    return this._request("HeartBeat", null, (t) => t === "HeartBeatResponse");
  }

  /** RoomJoin; resolves with RoomJoinSuccess{room_id, user_count}. */
  joinRoom(roomId, nickname = this.nickname || `user${this.userId}`) {
    return this._request(
      "RoomJoin",
      { user_id: this.userId, room_id: roomId, nickname },
      (t, b) => t === "RoomJoinSuccess" && b.room_id === roomId,
    );
  }

  /** RoomLeave; resolves with RoomLeaveSuccess{room_id, user_count}. */
  leaveRoom(roomId = this.roomId) {
    return this._request(
      "RoomLeave",
      { user_id: this.userId, room_id: roomId },
      (t, b) => t === "RoomLeaveSuccess" && b.room_id === roomId,
    );
  }

  /** ChatMessage; resolves with our own chat as the room got it. */
  chat(message, roomId = this.roomId) {
    const me = this.userId;
    return this._request(
      "ChatMessage",
      { user_id: me, room_id: roomId, message },
      (t, b) => t === "ChatMessage" && b.user_id === me && b.room_id === roomId,
    );
  }

  /** StartGame; resolves with GameStarted{room_id, players} (we start ready). */
  startGame(roomId = this.roomId) {
    const me = this.userId;
    return this._request(
      "StartGame",
      { room_id: roomId },
      // Another member's StartGame also sends GameStarted, but only the starter is ready.
      (t, b) =>
        t === "GameStarted" &&
        b.room_id === roomId &&
        b.players.some((p) => p.user_id === me && p.ready),
    );
  }

  /** ToggleReady; resolves with PlayerReadyUpdate for us, or GameInProgress when
   *  our ready made every player ready. */
  toggleReady(roomId = this.roomId) {
    const me = this.userId;
    const wasReady = this.ready;
    return this._request(
      "ToggleReady",
      { room_id: roomId },
      (t, b) =>
        b !== null &&
        b.room_id === roomId &&
        ((t === "PlayerReadyUpdate" && b.user_id === me) ||
          (t === "GameInProgress" && !wasReady)),
    );
  }

  /** PlayerAction with a wire action ({Move:{x,y,direction}}, {Attack:{target_id,damage}},
   *  {UseItem:{item_id}}); resolves with our ActionResult. */
  action(action, roomId = this.roomId) {
    const me = this.userId;
    return this._request(
      "PlayerAction",
      { room_id: roomId, action },
      (t, b) => t === "ActionResult" && b.user_id === me && b.room_id === roomId,
    );
  }

  move(x, y, direction = 0, roomId = this.roomId) {
    return this.action({ Move: { x, y, direction } }, roomId);
  }

  attack(targetId, damage, roomId = this.roomId) {
    return this.action({ Attack: { target_id: targetId, damage } }, roomId);
  }

  useItem(itemId, roomId = this.roomId) {
    return this.action({ UseItem: { item_id: itemId } }, roomId);
  }

  /** Send any message without waiting for a reply: `send("HeartBeat")`, `send({...})`. */
  send(message) {
    if (!this._isOpen()) throw new GamedError(0, "not connected", "closed");
    this._ws.send(JSON.stringify(message));
    const [type, body] = typeof message === "string" ? [message, null] : Object.entries(message)[0];
    this._emit("sent", type, body);
  }

  /** Close for good (code 1000): no reconnect; waiting requests are rejected. */
  close() {
    this._final = true;
    this._acked = false;
    this.roomId = null;
    this.ready = false;
    clearTimeout(this._retryTimer);
    if (this._ws) {
      const ws = this._ws;
      this._closed(1000, "closed by the client");
      ws.close(1000);
    }
    this.state = "closed";
  }

  // -- the socket ---------------------------------------------------------------

  _isOpen() {
    return this._ws !== null && this._ws.readyState === 1;
  }

  _open() {
    if (this._ws) {
      // A socket still opening (connect() again before it opened): drop it quietly.
      const old = this._ws;
      const onclose = old.onclose;
      this._ws = null;
      old.onopen = old.onmessage = old.onclose = null;
      old.close(1000);
      if (onclose) onclose({ code: 1000, reason: "superseded" }); // rejects its open()
    }
    this.state = this._acked ? "reconnecting" : "connecting";
    return new Promise((resolve, reject) => {
      const ws = new this.options.WebSocket(this.url);
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this.state = "open";
        this._startHeartbeats();
        this._emit("open");
        resolve();
      };
      ws.onmessage = (ev) => this._received(ev.data);
      ws.onclose = (ev) => {
        if (!opened) reject(new GamedError(0, `cannot open ${this.url} (${ev.code})`, "closed"));
        if (this._ws !== ws) return; // already handled (heartbeat timeout, close(), superseded)
        this._closed(ev.code, ev.reason);
      };
    });
  }

  _sendConnect() {
    const { userId, nickname, token } = this._creds;
    const p = this._request(
      "Connect",
      { room_id: 0, user_id: userId, token, nickname },
      (t, b) => t === "ConnectionAck" && b.user_id === userId,
    );
    return p.then(
      (ack) => {
        this._acked = true;
        this._attempt = 0;
        return ack;
      },
      (err) => {
        // Refused (a bad token...): stop. 503 (full, or shutting down for a restart): retry.
        if (err.kind === "server" && err.code !== 503) this._final = true;
        throw err;
      },
    );
  }

  _closed(code, reason) {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      const onclose = ws.onclose;
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (onclose) onclose({ code, reason }); // settles an open() still waiting
    }
    clearInterval(this._heartbeatTimer);
    for (const e of this._pending.splice(0)) {
      clearTimeout(e.timer);
      e.reject(new GamedError(0, `connection closed (${code})`, "closed", e.type));
    }
    if (FINAL_CLOSE_CODES.has(code)) this._final = true;
    let reconnectIn = null;
    if (this.options.reconnect && this._acked && !this._final) {
      const base = Math.min(this.options.maxDelayMs, this.options.initialDelayMs * 2 ** this._attempt);
      reconnectIn = Math.round(base / 2 + (Math.random() * base) / 2); // "equal jitter"
      this._attempt += 1;
      this.state = "reconnecting";
      this._retryTimer = setTimeout(() => this._reconnect(), reconnectIn);
      this._emit("reconnecting", { attempt: this._attempt, delayMs: reconnectIn });
    } else {
      this.state = "closed";
    }
    this._emit("close", { code, reason, reconnectIn });
  }

  async _reconnect() {
    const room = this.roomId;
    try {
      await this._open();
      const ack = await this._sendConnect();
      this._emit("reconnected", ack);
      if (room !== null) await this.joinRoom(room);
    } catch (err) {
      // A failed open already scheduled the next try (or gave up) in _closed.
      if (err.kind === "server") this._emit("reconnectFailed", err);
    }
  }

  _startHeartbeats() {
    clearInterval(this._heartbeatTimer);
    if (!this.options.heartbeatMs) return;
    this._heartbeatTimer = setInterval(() => {
      this.heartbeat().catch((err) => {
        if (err.kind === "timeout" && this._ws) {
          const ws = this._ws;
          this._closed(4000, "heartbeat timeout");
          ws.close(4000, "heartbeat timeout");
        }
      });
    }, this.options.heartbeatMs);
  }

  // -- requests and replies ---------------------------------------------------------

  _request(type, body, isReply) {
    let entry;
    const promise = new Promise((resolve, reject) => {
      entry = { type, isReply, resolve, reject, timer: null };
    });
    promise.catch(() => {}); // handled: errors are also emitted as "Error" events
    if (!this._isOpen()) {
      entry.reject(new GamedError(0, "not connected", "closed", type));
      return promise;
    }
    entry.timer = setTimeout(() => {
      const i = this._pending.indexOf(entry);
      if (i >= 0) this._pending.splice(i, 1);
      entry.reject(
        new GamedError(0, `no reply to ${type} in ${this.options.requestTimeoutMs} ms`, "timeout", type),
      );
    }, this.options.requestTimeoutMs);
    this._pending.push(entry);
    this.send(body === null ? type : { [type]: body });
    return promise;
  }

  _received(text) {
    let type, body;
    try {
      const value = JSON.parse(text);
      if (typeof value === "string") [type, body] = [value, null];
      else [type, body] = Object.entries(value)[0];
    } catch (e) {
      console.error("gamed.js: not a protocol message", text);
      return;
    }
    this._track(type, body);
    let request = null;
    if (type === "Error") {
      if (body.code === 409 && /^replaced by a new connection/.test(body.message)) {
        this._final = true; // a takeover: another client is this user now
      } else {
        const e = this._pending.shift();
        if (e) {
          clearTimeout(e.timer);
          request = e.type;
          e.reject(new GamedError(body.code, body.message, "server", e.type));
        }
      }
    }
    this._emit(type, body, { request });
    this._emit("*", type, body, { request });
    if (type !== "Error") this._settle(type, body);
  }

  _settle(type, body) {
    const i = this._pending.findIndex((e) => e.isReply(type, body));
    if (i < 0) return; // a broadcast, not a reply
    for (const e of this._pending.splice(0, i + 1)) {
      clearTimeout(e.timer);
      if (e.isReply(type, body)) e.resolve(body);
      else e.reject(new GamedError(0, `no reply to ${e.type}`, "no-reply", e.type));
    }
  }

  _track(type, b) {
    const me = this.userId;
    if (type === "ConnectionAck") this.userId = b.user_id;
    else if (type === "RoomJoinSuccess") this.roomId = b.room_id;
    else if (type === "RoomLeaveSuccess" && b.room_id === this.roomId) this.roomId = null;
    else if (type === "GameStarted") this.ready = b.players.some((p) => p.user_id === me && p.ready);
    else if (type === "PlayerReadyUpdate" && b.user_id === me) this.ready = b.ready;
    else if (type === "GameEnded") this.ready = false;
  }
}
