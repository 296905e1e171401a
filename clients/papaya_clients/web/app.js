// papaya-trio browser client: plain JavaScript, no build step, no third-party code.
//
// Theory of operation
// -------------------
// One WebSocket at a time carries the native dialect's JSON objects, one per text frame
// (docs/protocol.md). The client remembers `lastSeq`, the newest sequence number it has
// shown; after a drop it reconnects with backoff and says hello with `since: lastSeq`, so the
// server replays exactly what it missed (no gap), and a message whose seq is not above
// lastSeq is never shown twice (no duplicate). Every message the user sends gets a unique id
// and stays in `pending` until its ack; on reconnect the pending ones are sent again with the
// same ids, and the server stores each id once.
//
// Text from the network is only ever put in the page with textContent, never as HTML.
"use strict";

(() => {
  const STORAGE_KEY = "papaya-trio.login";
  const DEFAULT_MAX_TEXT_BYTES = 4096; // the server's default; /server.json tells the real one
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
  const PING_EVERY_MS = 25000; // the server's own WebSocket pings keep it alive from its side
  const SILENCE_LIMIT_MS = 40000; // no frame at all for this long: the connection is dead
  const MAX_SHOWN = 5000; // messages kept in the page; older ones are removed from the top
  const NOTICE_MS = 8000;
  const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/g;

  const $ = (id) => document.getElementById(id);
  const ui = {
    login: $("login"),
    user: $("user"),
    key: $("key"),
    remember: $("remember"),
    loginError: $("login-error"),
    chat: $("chat"),
    log: $("log"),
    messages: $("messages"),
    outbox: $("outbox"),
    composer: $("composer"),
    text: $("text"),
    status: $("status"),
    notice: $("notice"),
    who: $("who"),
    signout: $("signout"),
  };

  const state = {
    login: null, // {user, key}
    ws: null, // the current WebSocket, if any
    welcomed: false, // the current WebSocket has had its welcome
    everWelcomed: false, // since then, hello carries `since`
    lastSeq: 0,
    lastDay: "",
    pending: [], // [{id, text, el}], oldest first, not yet acked
    attempt: 0,
    retryTimer: 0,
    pingTimer: 0,
    heardAt: 0,
    pings: 0,
    noticeTimer: 0,
    maxTextBytes: DEFAULT_MAX_TEXT_BYTES,
    idPrefix: randomHex(6),
    nextId: 1,
  };

  // --- helpers -----------------------------------------------------------------------------
  function randomHex(bytes) {
    const buf = new Uint8Array(bytes);
    crypto.getRandomValues(buf); // works on plain http too, unlike crypto.randomUUID
    return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function utf8Length(text) {
    return new TextEncoder().encode(text).length;
  }

  function setStatus(name, text) {
    ui.status.dataset.state = name;
    ui.status.textContent = text;
  }

  function notice(text) {
    ui.notice.textContent = text;
    clearTimeout(state.noticeTimer);
    state.noticeTimer = setTimeout(() => {
      ui.notice.textContent = "";
    }, NOTICE_MS);
  }

  function nearBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A message's text takes its direction from its own first strong character and is isolated
  // (dir="auto"), and names are <bdi>: right-to-left text or bidi controls in one message can
  // never reorder the name, the time or another message around it.
  function textOf(text) {
    const node = el("span", "text", text);
    node.dir = "auto";
    return node;
  }

  // --- rendering ---------------------------------------------------------------------------
  function showMessage(m) {
    if (m.seq <= state.lastSeq) return; // already shown (a replay after reconnecting)
    state.lastSeq = m.seq;
    const stick = nearBottom();
    const when = new Date(m.time);
    const valid = !Number.isNaN(when.getTime());
    const day = valid ? when.toDateString() : "";
    if (day && day !== state.lastDay) {
      state.lastDay = day;
      const label = when.toLocaleDateString([], {
        weekday: "long",
        year: "numeric",
        month: "long",
        day: "numeric",
      });
      ui.messages.append(el("li", "day", label));
    }
    const item = el("li", "message");
    item.dataset.seq = String(m.seq);
    const own = state.login !== null && m.user === state.login.user;
    if (own) item.classList.add("own");
    const time = el("time", "time", valid ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : m.time);
    if (valid) {
      time.dateTime = m.time;
      time.title = when.toLocaleString();
    }
    const user = el("bdi", "user", String(m.user));
    if (own) user.title = "you";
    item.append(time, user, textOf(String(m.text)));
    ui.messages.append(item);
    trimShown();
    if (stick || own) scrollToBottom();
  }

  function trimShown() {
    let extra = ui.messages.querySelectorAll("li.message").length - MAX_SHOWN;
    while (extra > 0 && ui.messages.firstElementChild) {
      if (ui.messages.firstElementChild.classList.contains("message")) extra -= 1;
      ui.messages.firstElementChild.remove();
    }
  }

  function showPending(entry) {
    entry.el = el("li", "pending");
    entry.el.append(el("bdi", "user", state.login.user), textOf(entry.text));
    entry.el.append(el("span", "state", "sending…"));
    ui.outbox.append(entry.el);
    scrollToBottom();
  }

  function dropPending(id) {
    const index = state.pending.findIndex((p) => p.id === id);
    if (index < 0) return null;
    const [entry] = state.pending.splice(index, 1);
    entry.el.remove();
    return entry;
  }

  // --- the connection ----------------------------------------------------------------------
  function socketUrl() {
    const url = new URL("ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.href;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.login === null || state.ws !== null) return;
    setStatus("connecting", "connecting…");
    const ws = new WebSocket(socketUrl());
    state.ws = ws;
    state.welcomed = false;
    state.heardAt = Date.now();
    ws.onopen = () => {
      const hello = { type: "hello", key: state.login.key, user: state.login.user };
      if (state.everWelcomed) hello.since = state.lastSeq;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => {
      state.heardAt = Date.now();
      if (typeof event.data !== "string") return;
      let obj;
      try {
        obj = JSON.parse(event.data);
      } catch {
        return;
      }
      handle(obj);
    };
    ws.onclose = (event) => connectionLost(ws, event.code);
  }

  function handle(obj) {
    switch (obj.type) {
      case "welcome":
        state.welcomed = true;
        state.everWelcomed = true;
        state.attempt = 0;
        setStatus("online", "online");
        for (const entry of state.pending) transmit(entry); // same ids: stored once
        break;
      case "message":
        showMessage(obj);
        break;
      case "ack":
        dropPending(obj.id);
        break;
      case "error":
        serverError(obj);
        break;
      default: // pong, and whatever a newer server may add
        break;
    }
  }

  function serverError(error) {
    if (error.id !== undefined && error.id !== null) {
      const entry = dropPending(error.id);
      if (entry) notice(`Not sent: ${error.message} (“${entry.text.slice(0, 60)}”)`);
      return;
    }
    if (error.code === "bad_key" || error.code === "bad_user") {
      signOut(error.message);
      return;
    }
    notice(error.fatal ? `Disconnected: ${error.message}` : error.message);
  }

  function transmit(entry) {
    if (state.ws === null || !state.welcomed) return; // sent after the next welcome
    state.ws.send(JSON.stringify({ type: "send", text: entry.text, id: entry.id }));
  }

  function connectionLost(ws, code) {
    if (ws !== state.ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    state.ws = null;
    state.welcomed = false;
    if (code === 1009 && state.pending.length) {
      // The server found a frame too big; drop the newest message rather than loop on it.
      const entry = state.pending[state.pending.length - 1];
      dropPending(entry.id);
      notice("Not sent: the message is too long for the server");
    }
    if (state.login === null) return;
    const base = BACKOFF_MS[Math.min(state.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.75 + Math.random() / 2));
    state.attempt += 1;
    setStatus("offline", `offline, retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
    state.retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (state.login !== null && state.ws === null) {
      state.attempt = 0;
      connect();
    }
  }

  function keepAlive() {
    const ws = state.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - state.heardAt > SILENCE_LIMIT_MS) {
      ws.close(); // the close handshake may never finish on a dead link: do not wait for it
      connectionLost(ws, 1006);
      return;
    }
    state.pings += 1;
    ws.send(JSON.stringify({ type: "ping", id: `k${state.pings}` }));
  }

  // --- user actions ------------------------------------------------------------------------
  function send(text) {
    const clean = text.replace(CONTROL_CHARS, " ");
    if (!clean.trim()) return true;
    const size = utf8Length(clean);
    if (size > state.maxTextBytes) {
      notice(`That message is ${size} bytes; the limit is ${state.maxTextBytes}.`);
      return false;
    }
    const entry = { id: `${state.idPrefix}-${state.nextId}`, text: clean, el: null };
    state.nextId += 1;
    state.pending.push(entry);
    showPending(entry);
    transmit(entry);
    return true;
  }

  function submitComposer(event) {
    event.preventDefault();
    // A multi-line paste goes out as one message per line (the protocol has no newlines).
    const lines = ui.text.value.split(/\r\n|\r|\n/);
    const rest = [];
    for (const line of lines) {
      if (rest.length || !send(line)) rest.push(line);
    }
    ui.text.value = rest.join("\n");
    fitComposer();
    ui.text.focus();
  }

  function fitComposer() {
    ui.text.rows = Math.min(6, Math.max(1, ui.text.value.split("\n").length));
  }

  function start(login) {
    state.login = login;
    ui.login.hidden = true;
    ui.chat.hidden = false;
    ui.signout.hidden = false;
    ui.who.textContent = login.user;
    ui.loginError.textContent = "";
    connect();
    ui.text.focus();
  }

  function signOut(reason) {
    const user = state.login ? state.login.user : "";
    state.login = null;
    clearTimeout(state.retryTimer);
    if (state.ws !== null) {
      const ws = state.ws;
      ws.onopen = ws.onmessage = ws.onclose = null;
      state.ws = null;
      ws.close(1000);
    }
    localStorage.removeItem(STORAGE_KEY);
    state.pending = [];
    state.lastSeq = 0;
    state.lastDay = "";
    state.everWelcomed = false;
    ui.messages.replaceChildren();
    ui.outbox.replaceChildren();
    ui.chat.hidden = true;
    ui.signout.hidden = true;
    ui.who.textContent = "";
    ui.login.hidden = false;
    ui.user.value = user;
    ui.key.value = "";
    ui.loginError.textContent = reason || "";
    setStatus("signed-out", "signed out");
    (user ? ui.key : ui.user).focus();
  }

  function submitLogin(event) {
    event.preventDefault();
    const login = { user: ui.user.value.trim(), key: ui.key.value.trim() };
    if (!login.user || !login.key) return;
    if (ui.remember.checked) {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(login));
    } else {
      localStorage.removeItem(STORAGE_KEY);
    }
    start(login);
  }

  function rememberedLogin() {
    try {
      const login = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
      if (login && typeof login.user === "string" && typeof login.key === "string") {
        return login;
      }
    } catch {
      // fall through: ask again
    }
    return null;
  }

  async function readLimits() {
    try {
      const reply = await fetch("server.json", { cache: "no-store" });
      const limits = await reply.json();
      if (Number.isInteger(limits.max_message_bytes) && limits.max_message_bytes > 0) {
        state.maxTextBytes = limits.max_message_bytes;
      }
    } catch {
      // keep the default
    }
  }

  // --- wiring ------------------------------------------------------------------------------
  ui.login.addEventListener("submit", submitLogin);
  ui.composer.addEventListener("submit", submitComposer);
  ui.text.addEventListener("input", fitComposer);
  ui.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      submitComposer(event);
    }
  });
  ui.signout.addEventListener("click", () => signOut(""));
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") reconnectNow();
  });
  state.pingTimer = setInterval(keepAlive, PING_EVERY_MS);

  readLimits();
  const remembered = rememberedLogin();
  if (remembered) {
    start(remembered);
  } else {
    ui.login.hidden = false;
    ui.user.focus();
  }
})();
