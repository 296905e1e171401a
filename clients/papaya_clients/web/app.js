// papaya-trio browser client: plain JavaScript, no build step, no third-party code.
//
// Theory of operation
// -------------------
// One WebSocket at a time carries the native dialect's JSON objects, one per text frame
// (docs/protocol.md). The client remembers `lastSeq`, the newest sequence number it has
// shown; after a drop it reconnects with backoff (a live countdown, and "retry now") and says
// hello with `since: lastSeq`, so the server replays exactly what it missed (no gap), and a
// message whose seq is not above lastSeq is never shown twice (no duplicate). Every message
// the user sends gets a unique id and stays in `pending` until its ack; on reconnect the
// pending ones are sent again with the same ids, and the server stores each id once.
//
// Older messages come in pages (`history` requests with `before` = the oldest shown seq) as
// the reader scrolls up; a page is put above the others and the scroll position is moved by
// exactly the height it added, so what the reader was looking at does not move. The welcome's
// `first` says where the room's history begins.
//
// Who is online is the welcome's `online` list, kept current by `presence` events; runs of
// joins and leaves in the conversation are collapsed into one line.
//
// A message that arrives while the reader is scrolled up or the page is hidden is unread:
// a "new messages" line goes above the first of them, a jump button and the tab title count
// them, and they are read once the bottom is in view.
//
// Text from the network is only ever put in the page with textContent and DOM nodes, never as
// HTML; the only markup made from it is an <a> for an http(s) URL.
"use strict";

(() => {
  const STORAGE_KEY = "papaya-trio.login";
  const NOTIFY_KEY = "papaya-trio.notify";
  const DEFAULT_MAX_TEXT_BYTES = 4096; // the server's default; /server.json tells the real one
  const MAX_LINES = 100; // lines in one message (docs/protocol.md)
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
  const PING_EVERY_MS = 25000; // the server's own WebSocket pings keep it alive from its side
  const SILENCE_LIMIT_MS = 40000; // no frame at all for this long: the connection is dead
  const MAX_SHOWN = 5000; // messages kept in the page
  const PAGE_SIZE = 50; // messages per history request
  const HISTORY_TIMEOUT_MS = 15000;
  const REPLAY_WAIT_MS = 2000; // after a welcome, the messages it announced start within this // a page that has not come by then is asked for again
  const TOP_MARGIN_PX = 300; // this close to the top, the next older page is loaded
  const NOTICE_MS = 8000;
  const TYPING_EVERY_MS = 3000; // at most one typing hint per this long
  const TYPING_SHOWN_MS = 6000; // a typing hint is shown this long unless renewed
  const GROUP_MS = 5 * 60 * 1000; // messages from one sender closer than this are grouped
  const PRESENCE_NAMES = 3; // names listed in a collapsed join/leave line before "N others"
  const WIDE = "(min-width: 50rem)"; // the member list is a panel (wider) or a sheet (style.css)
  const PAPAYA_MEMBER = "\u0000papaya"; // member-list key of the papayaChat connections
  const CONTROL_CHARS = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/g; // all but \n
  const URL_PATTERN = /\bhttps?:\/\/[^\s<>"]+/gi;
  const TRAILING_PUNCTUATION = /[.,;:!?'\]}*]$/;

  const $ = (id) => document.getElementById(id);
  const ui = {
    login: $("login"),
    user: $("user"),
    key: $("key"),
    token: $("token"),
    remember: $("remember"),
    loginError: $("login-error"),
    chat: $("chat"),
    log: $("log"),
    top: $("top"),
    older: $("older"),
    topText: $("top-text"),
    empty: $("empty"),
    messages: $("messages"),
    outbox: $("outbox"),
    jump: $("jump"),
    typing: $("typing"),
    composer: $("composer"),
    text: $("text"),
    status: $("status"),
    notice: $("notice"),
    offline: $("offline"),
    countdown: $("countdown"),
    retry: $("retry"),
    who: $("who"),
    signout: $("signout"),
    membersToggle: $("members-toggle"),
    membersCount: $("members-count"),
    membersClose: $("members-close"),
    memberList: $("member-list"),
    notify: $("notify"),
  };
  const BASE_TITLE = document.title;

  const state = {
    login: null, // {user, key, token}
    ws: null, // the current WebSocket, if any
    welcomed: false, // the current WebSocket has had its welcome
    everWelcomed: false, // since then, hello carries `since`
    verified: false, // this connection's name is verified by a personal token
    lastSeq: 0, // newest seq shown
    oldestSeq: 0, // oldest seq shown (0: none)
    lastDay: "",
    quietUntil: 0, // messages up to this seq were history on the first welcome: not unread
    head: 0,
    replaying: false, // the messages up to `head` are still coming after a welcome
    replayTimer: 0,
    first: null, // the oldest stored seq (welcome.first), null if the server does not say
    history: { id: null, timer: 0, count: 0 }, // the history request in flight
    features: { presence: false },
    members: new Map(), // key -> {user, verified, dialect, count}
    typers: new Map(), // user -> time the hint expires
    typingTimer: 0,
    typingSentAt: -Infinity,
    unread: 0,
    pending: [], // [{id, text, action, el}], oldest first, not yet acked
    attempt: 0,
    retryTimer: 0,
    retryAt: 0,
    countdownTimer: 0,
    pingTimer: 0,
    heardAt: 0,
    pings: 0,
    noticeTimer: 0,
    maxTextBytes: DEFAULT_MAX_TEXT_BYTES,
    idPrefix: randomHex(6),
    nextId: 1,
    membersOpen: false,
    notify: localStorage.getItem(NOTIFY_KEY) === "on",
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

  function send(obj) {
    if (state.ws !== null && state.welcomed) state.ws.send(JSON.stringify(obj));
  }

  // The URL at the start of `candidate`, without the punctuation that ends a sentence around
  // it (a closing parenthesis is kept when the URL opened one).
  function trimUrl(candidate) {
    let url = candidate;
    for (let i = 0; i < 16 && url.length; i += 1) {
      const open = url.split("(").length;
      const close = url.split(")").length;
      if (TRAILING_PUNCTUATION.test(url) || (url.endsWith(")") && close > open)) {
        url = url.slice(0, -1);
      } else {
        break;
      }
    }
    return url;
  }

  function linkTo(text) {
    let parsed;
    try {
      parsed = new URL(text);
    } catch {
      return null;
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return null;
    const link = el("a", "", text);
    link.href = parsed.href;
    link.rel = "noopener noreferrer";
    link.target = "_blank";
    return link;
  }

  // A message's text, with http(s) URLs as links and nothing else as markup. It takes its
  // direction from its own first strong character and is isolated (dir="auto"), and names
  // are <bdi>: right-to-left text or bidi controls in one message can never reorder the name,
  // the time or another message around it. Newlines show as line breaks (white-space:
  // pre-wrap in the style sheet).
  function textOf(text) {
    const node = el("span", "text");
    node.dir = "auto";
    let done = 0;
    for (const match of text.matchAll(URL_PATTERN)) {
      const url = trimUrl(match[0]);
      const link = linkTo(url);
      if (link === null) continue;
      node.append(text.slice(done, match.index), link);
      done = match.index + url.length;
    }
    node.append(text.slice(done));
    return node;
  }

  function mentions(text, user) {
    const name = user.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    return new RegExp(`(^|[^\\p{L}\\p{N}_])@?${name}(?![\\p{L}\\p{N}_])`, "iu").test(text);
  }

  function nameNode(user, verified) {
    const node = el("bdi", "user", user);
    if (!verified) {
      node.classList.add("unverified");
      node.title = "not verified: anyone with the room key could use this name";
    }
    return node;
  }

  // --- rendering messages ------------------------------------------------------------------
  function dayOf(m) {
    const when = new Date(m.time);
    return Number.isNaN(when.getTime()) ? "" : when.toDateString();
  }

  function dayLabel(m) {
    const when = new Date(m.time);
    const label = when.toLocaleDateString([], {
      weekday: "long",
      year: "numeric",
      month: "long",
      day: "numeric",
    });
    const node = el("li", "day", label);
    node.dataset.day = dayOf(m);
    return node;
  }

  function isOwn(m) {
    if (state.login === null || m.user !== state.login.user) return false;
    return !state.verified || m.verified === true; // a verified user's unverified namesake is not them
  }

  // Messages are grouped when they follow each other from one sender, same day, within
  // GROUP_MS; actions and anything between them (a join, the unread line) break a group.
  function continues(prev, item) {
    return (
      prev !== null &&
      prev.classList.contains("message") &&
      !prev.classList.contains("action") &&
      !item.classList.contains("action") &&
      prev.dataset.sender === item.dataset.sender &&
      prev.dataset.day === item.dataset.day &&
      Math.abs(Number(item.dataset.ms) - Number(prev.dataset.ms)) < GROUP_MS
    );
  }

  function messageNode(m) {
    const item = el("li", "message");
    const when = new Date(m.time);
    const valid = !Number.isNaN(when.getTime());
    const user = String(m.user);
    const verified = m.verified === true;
    const papaya = m.dialect === "papaya";
    item.dataset.seq = String(m.seq);
    item.dataset.day = dayOf(m);
    item.dataset.ms = String(valid ? when.getTime() : 0);
    item.dataset.sender = JSON.stringify([user, verified, papaya]);
    if (isOwn(m)) item.classList.add("own");
    if (papaya) item.classList.add("papaya");
    if (state.login !== null && !isOwn(m) && mentions(String(m.text), state.login.user)) {
      item.classList.add("mention");
    }
    const time = el("time", "time", valid ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "");
    if (valid) {
      time.dateTime = m.time;
      time.title = when.toLocaleString();
    }
    const name = nameNode(user, verified);
    if (isOwn(m)) name.title = "you";
    const tags = [];
    if (papaya) {
      const tag = el("span", "tag", "papayaChat");
      tag.title = "sent from the papayaChat dialect: the name is whatever its client said";
      tags.push(tag);
    }
    if (m.action === true) {
      item.classList.add("action");
      const body = el("span", "body");
      body.append("* ", name, ...tags, " ", textOf(String(m.text)));
      item.append(time, body);
    } else {
      const who = el("span", "sender");
      who.append(name, ...tags);
      item.append(time, who, textOf(String(m.text)));
    }
    return item;
  }

  // Nodes for `list` (oldest first) following `prev` (the element before them, or null) and
  // `lastDay` (the day of the message before them, "" if none).
  function renderRun(list, prev, lastDay) {
    const fragment = document.createDocumentFragment();
    let before = prev;
    let day = lastDay;
    for (const m of list) {
      const item = messageNode(m);
      if (item.dataset.day && item.dataset.day !== day) {
        day = item.dataset.day;
        before = dayLabel(m);
        fragment.append(before);
      }
      if (continues(before, item)) item.classList.add("cont");
      fragment.append(item);
      before = item;
    }
    return { fragment, last: before, day };
  }

  function shownCount() {
    return ui.messages.querySelectorAll("li.message").length;
  }

  function showLive(m) {
    if (!Number.isInteger(m.seq) || m.seq <= state.lastSeq) return; // already shown (a replay)
    state.lastSeq = m.seq;
    if (state.oldestSeq === 0) state.oldestSeq = m.seq;
    const stick = nearBottom();
    const own = isOwn(m);
    const fresh = m.seq > state.quietUntil && !own;
    const unread = fresh && (!stick || document.hidden);
    if (unread && state.unread === 0) {
      for (const old of ui.messages.querySelectorAll("li.new-marker")) removeAbove(old);
      const marker = el("li", "new-marker", "New messages");
      ui.messages.append(marker);
    }
    const run = renderRun([m], ui.messages.lastElementChild, state.lastDay);
    state.lastDay = run.day;
    ui.messages.append(run.fragment);
    state.typers.delete(String(m.user));
    showTyping();
    if (unread) {
      state.unread += 1;
      showUnread();
    }
    if (fresh && run.last.classList.contains("mention")) notifyMention(m);
    if (stick || own) {
      trimShown();
      scrollToBottom();
    }
    updateTop();
  }

  // Removes `node`; if it was above the visible part of the log, what is in view stays put.
  function removeAbove(node) {
    const above = node.getBoundingClientRect().bottom <= ui.log.getBoundingClientRect().top;
    const height = ui.log.scrollHeight;
    node.remove();
    if (above) ui.log.scrollTop -= height - ui.log.scrollHeight;
  }

  // Keeps at most MAX_SHOWN messages, removing the oldest (only while the reader is at the
  // bottom, so nothing moves under their eyes).
  function trimShown() {
    let extra = shownCount() - MAX_SHOWN;
    if (extra <= 0) return;
    while (extra > 0 && ui.messages.firstElementChild) {
      if (ui.messages.firstElementChild.classList.contains("message")) extra -= 1;
      ui.messages.firstElementChild.remove();
    }
    while (ui.messages.firstElementChild && !ui.messages.firstElementChild.classList.contains("message")) {
      ui.messages.firstElementChild.remove();
    }
    const first = ui.messages.firstElementChild;
    if (first) {
      first.classList.remove("cont");
      state.oldestSeq = Number(first.dataset.seq);
      if (first.dataset.day) first.before(dayLabel({ time: first.querySelector("time").dateTime }));
    }
  }

  function showPending(entry) {
    entry.el = el("li", "pending");
    const name = nameNode(state.login.user, true);
    if (entry.action) {
      const body = el("span", "body");
      body.append("* ", name, " ", textOf(entry.text));
      entry.el.append(body);
    } else {
      entry.el.append(name, textOf(entry.text));
    }
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

  // --- unread messages ---------------------------------------------------------------------
  function showUnread() {
    const count = state.unread;
    document.title = count ? `(${count}) ${BASE_TITLE}` : BASE_TITLE;
    ui.jump.hidden = count === 0;
    ui.jump.textContent = count === 1 ? "1 new message ↓" : `${count} new messages ↓`;
  }

  function readUp() {
    if (state.unread && !document.hidden && nearBottom()) {
      state.unread = 0;
      showUnread();
    }
  }

  function notifyMention(m) {
    if (!state.notify || !("Notification" in window) || Notification.permission !== "granted") return;
    if (!document.hidden && document.hasFocus()) return;
    const text = String(m.text);
    const body = m.action === true ? `* ${m.user} ${text}` : text;
    try {
      new Notification(`${m.user} mentioned you`, { body: body.slice(0, 200), tag: "papaya-mention" });
    } catch {
      // some browsers allow notifications only from a service worker: nothing to do
    }
  }

  function showNotify() {
    ui.notify.setAttribute("aria-pressed", String(state.notify));
    ui.notify.title = state.notify
      ? "Notifications when someone mentions your name: on (click to turn off)"
      : "Notify me when someone mentions my name";
  }

  async function toggleNotify() {
    if (state.notify) {
      state.notify = false;
    } else if (!("Notification" in window)) {
      notice("This browser cannot show notifications.");
    } else {
      const answer = Notification.permission === "default" ? await Notification.requestPermission() : Notification.permission;
      if (answer === "granted") {
        state.notify = true;
      } else {
        notice("Notifications are blocked for this page in the browser's settings.");
      }
    }
    localStorage.setItem(NOTIFY_KEY, state.notify ? "on" : "off");
    showNotify();
  }

  // --- older messages ----------------------------------------------------------------------
  function atStart() {
    if (state.first === null) return false;
    return state.first === 0 || (state.oldestSeq !== 0 && state.oldestSeq <= state.first);
  }

  function updateTop() {
    const empty = state.everWelcomed && shownCount() === 0 && state.head === 0 && ui.outbox.childElementCount === 0;
    ui.empty.hidden = !empty;
    const known = state.first !== null && state.head > 0 && !state.replaying;
    ui.top.hidden = !known;
    if (!known) return;
    const loading = state.history.id !== null;
    const full = shownCount() >= MAX_SHOWN;
    ui.older.hidden = atStart() || loading || full;
    if (atStart()) {
      ui.topText.textContent = "This is the start of the room.";
    } else if (loading) {
      ui.topText.textContent = "Loading older messages…";
    } else if (full) {
      ui.topText.textContent = `${MAX_SHOWN} messages are shown; older ones are kept in the room's log.`;
    } else {
      ui.topText.textContent = "";
    }
    ui.top.classList.toggle("start", atStart());
  }

  function loadOlder() {
    if (!state.welcomed || state.replaying || state.history.id !== null || state.first === null) return;
    if (atStart() || state.head === 0 || shownCount() >= MAX_SHOWN) return;
    state.history.count += 1;
    state.history.id = `h-${state.history.count}`;
    const before = state.oldestSeq || state.head + 1; // none shown yet: from the newest
    send({ type: "history", before, limit: PAGE_SIZE, id: state.history.id });
    state.history.timer = setTimeout(historyDone, HISTORY_TIMEOUT_MS);
    updateTop();
  }

  function historyDone() {
    clearTimeout(state.history.timer);
    state.history.id = null;
    updateTop();
  }

  // Loads older pages while the reader is near the top, or while the page is too short to
  // scroll at all (then no scroll event would ever ask for them).
  function maybeLoadOlder() {
    if (ui.log.scrollTop < TOP_MARGIN_PX || ui.log.scrollHeight <= ui.log.clientHeight) loadOlder();
  }

  function showHistory(reply) {
    if (reply.id !== state.history.id) return;
    historyDone();
    if (Number.isInteger(reply.first)) state.first = reply.first;
    const messages = Array.isArray(reply.messages) ? reply.messages : [];
    const older = messages.filter((m) => Number.isInteger(m.seq) && (state.oldestSeq === 0 || m.seq < state.oldestSeq));
    // Nothing older (or, from a confused server, nothing new): this is where paging stops.
    if (older.length === 0) state.first = state.oldestSeq;
    if (older.length) {
      const oldFirst = ui.messages.firstElementChild;
      const anchor = ui.messages.querySelector("li.message");
      const anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;
      const run = renderRun(older, null, "");
      ui.messages.prepend(run.fragment);
      // The seam: one day label for a day on both sides, and a group that goes on across it.
      if (oldFirst && oldFirst.classList.contains("day") && oldFirst.dataset.day === run.day) {
        const next = oldFirst.nextElementSibling;
        oldFirst.remove();
        if (next && continues(run.last, next)) next.classList.add("cont");
      }
      state.oldestSeq = older[0].seq;
      state.lastSeq = Math.max(state.lastSeq, older[older.length - 1].seq); // none were shown before
      updateTop();
      if (anchor) ui.log.scrollTop += anchor.getBoundingClientRect().top - anchorTop; // what was in view stays put
      else scrollToBottom();
    }
    updateTop();
    maybeLoadOlder();
  }

  // --- who is online -----------------------------------------------------------------------
  function memberKey(user) {
    return user === null || user === undefined ? PAPAYA_MEMBER : String(user);
  }

  function showMembers() {
    const entries = [...state.members.values()].sort((a, b) => {
      if ((a.user === null) !== (b.user === null)) return a.user === null ? 1 : -1;
      return String(a.user).localeCompare(String(b.user));
    });
    const items = entries.map((m) => {
      const item = el("li", "member");
      if (m.user === null) {
        item.classList.add("papaya");
        item.append(el("span", "", "papayaChat clients"));
      } else {
        item.append(nameNode(m.user, m.verified));
        if (state.login !== null && m.user === state.login.user) item.append(el("span", "you", "(you)"));
        if (m.verified) {
          const tick = el("span", "verified", "✓");
          tick.title = "verified by a personal token";
          tick.setAttribute("aria-label", "verified");
          item.append(tick);
        } else {
          item.append(el("span", "tag unverified-tag", "unverified"));
        }
      }
      if (m.count > 1) item.append(el("span", "conns", `×${m.count}`));
      return item;
    });
    ui.memberList.replaceChildren(...items);
    const people = entries.reduce((sum, m) => sum + (m.user === null ? m.count : 1), 0);
    ui.membersCount.textContent = String(people);
    $("members-title").textContent = `Online (${people})`;
  }

  function setMembers(online) {
    state.members.clear();
    for (const m of Array.isArray(online) ? online : []) {
      if (typeof m !== "object" || m === null) continue;
      const user = typeof m.user === "string" ? m.user : null;
      const count = Number.isInteger(m.count) && m.count > 0 ? m.count : 1;
      state.members.set(memberKey(user), { user, verified: m.verified === true, dialect: m.dialect, count });
    }
    const me = state.login.user;
    if (!state.members.has(me)) state.members.set(me, { user: me, verified: state.verified, dialect: "websocket", count: 1 });
    showMembers();
  }

  function presence(event) {
    const user = typeof event.user === "string" ? event.user : null;
    const key = memberKey(user);
    const known = state.members.get(key);
    if (event.event === "join") {
      if (known) {
        known.count += 1;
        known.verified = event.verified === true;
      } else {
        state.members.set(key, { user, verified: event.verified === true, dialect: event.dialect, count: 1 });
      }
    } else if (event.event === "leave") {
      if (!known) return;
      known.count -= 1;
      if (known.count <= 0) state.members.delete(key);
    } else {
      return;
    }
    if (event.event === "leave" && user !== null) state.typers.delete(user);
    showMembers();
    showTyping();
    presenceLine(event.event, user);
  }

  // Joins and leaves in a row share one line: "alice, bob joined · carol left".
  function presenceLine(kind, user) {
    const stick = nearBottom();
    let line = ui.messages.lastElementChild;
    if (!line || !line.classList.contains("presence")) {
      line = el("li", "presence");
      line.events = { join: [], leave: [] };
      ui.messages.append(line);
    }
    const names = line.events[kind];
    const name = user === null ? null : user;
    if (!names.includes(name)) names.push(name);
    const parts = [];
    for (const [what, verb] of [["join", "joined"], ["leave", "left"]]) {
      const list = line.events[what];
      if (!list.length) continue;
      const part = document.createDocumentFragment();
      list.slice(0, PRESENCE_NAMES).forEach((n, i) => {
        if (i) part.append(", ");
        part.append(n === null ? el("span", "", "a papayaChat client") : el("bdi", "user", n));
      });
      if (list.length > PRESENCE_NAMES) part.append(` and ${list.length - PRESENCE_NAMES} others`);
      part.append(` ${verb}`);
      parts.push(part);
    }
    line.replaceChildren();
    parts.forEach((part, i) => {
      if (i) line.append(" · ");
      line.append(part);
    });
    if (stick) scrollToBottom();
  }

  function setMembersOpen(open) {
    state.membersOpen = open;
    ui.chat.classList.toggle("members-open", open);
    ui.membersToggle.setAttribute("aria-expanded", String(open));
  }

  // --- typing hints ------------------------------------------------------------------------
  function showTyping() {
    const now = Date.now();
    for (const [user, until] of state.typers) if (until <= now) state.typers.delete(user);
    const names = [...state.typers.keys()];
    ui.typing.replaceChildren();
    if (names.length === 1) {
      ui.typing.append(el("bdi", "", names[0]), " is typing…");
    } else if (names.length === 2) {
      ui.typing.append(el("bdi", "", names[0]), " and ", el("bdi", "", names[1]), " are typing…");
    } else if (names.length > 2) {
      ui.typing.append(`${names.length} people are typing…`);
    }
    clearTimeout(state.typingTimer);
    if (names.length) {
      const next = Math.min(...state.typers.values()) - now;
      state.typingTimer = setTimeout(showTyping, Math.max(100, next));
    }
  }

  function typingHint(event) {
    if (typeof event.user !== "string" || (state.login !== null && event.user === state.login.user)) return;
    state.typers.set(event.user, Date.now() + TYPING_SHOWN_MS);
    showTyping();
  }

  function userTyped() {
    fitComposer();
    if (!state.features.presence || !ui.text.value.trim()) return;
    const now = Date.now();
    if (now - state.typingSentAt < TYPING_EVERY_MS) return;
    state.typingSentAt = now;
    send({ type: "typing" });
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
    stopCountdown();
    if (state.login === null || state.ws !== null) return;
    setStatus("connecting", "connecting…");
    const ws = new WebSocket(socketUrl());
    state.ws = ws;
    state.welcomed = false;
    state.heardAt = Date.now();
    ws.onopen = () => {
      const hello = { type: "hello", user: state.login.user };
      if (state.login.key) hello.key = state.login.key;
      if (state.login.token) hello.token = state.login.token;
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
      if (typeof obj === "object" && obj !== null) handle(obj);
    };
    ws.onclose = (event) => connectionLost(ws, event.code);
  }

  function welcome(obj) {
    state.welcomed = true;
    if (!state.everWelcomed) state.quietUntil = Number.isInteger(obj.head) ? obj.head : 0;
    state.everWelcomed = true;
    state.attempt = 0;
    state.verified = obj.verified === true;
    state.head = Number.isInteger(obj.head) ? obj.head : 0;
    state.first = Number.isInteger(obj.first) ? obj.first : null;
    state.features.presence = Array.isArray(obj.online);
    ui.membersToggle.hidden = !state.features.presence;
    ui.chat.classList.toggle("has-members", state.features.presence);
    if (state.features.presence) setMembers(obj.online);
    setStatus("online", state.verified ? "online, verified" : "online");
    ui.chat.classList.remove("offline");
    for (const entry of state.pending) transmit(entry); // same ids: stored once
    updateTop();
    state.replaying = state.lastSeq < state.head;
    clearTimeout(state.replayTimer);
    if (state.replaying) {
      // A server configured to send no history sends nothing: do not wait for it forever.
      state.replayTimer = setTimeout(replayDone, REPLAY_WAIT_MS);
    } else {
      maybeLoadOlder();
    }
  }

  function replayDone() {
    clearTimeout(state.replayTimer);
    if (!state.replaying) return;
    state.replaying = false; // the first screenful is in: now it may need older ones
    updateTop();
    maybeLoadOlder();
  }

  function handle(obj) {
    switch (obj.type) {
      case "welcome":
        welcome(obj);
        break;
      case "message":
        showLive(obj);
        if (state.replaying && obj.seq >= state.head) replayDone();
        break;
      case "history":
        showHistory(obj);
        break;
      case "presence":
        presence(obj);
        break;
      case "typing":
        typingHint(obj);
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

  const LOGIN_ERRORS = {
    name_taken: (user) =>
      `The name “${user}” is in use by someone online right now. Choose another name ` +
      "(or, if it is your account's, give your personal token).",
    bad_token: () => "That personal token is not right for this name.",
  };

  function serverError(error) {
    if (typeof error.id === "string" && error.id === state.history.id) {
      historyDone();
      notice(`Older messages could not be loaded: ${error.message}`);
      return;
    }
    if (error.id !== undefined && error.id !== null) {
      const entry = dropPending(error.id);
      if (entry) notice(`Not sent: ${error.message} (“${entry.text.slice(0, 60)}”)`);
      return;
    }
    const friendly = LOGIN_ERRORS[error.code];
    if (error.code === "name_taken" && state.everWelcomed) {
      // Our own previous connection may still hold the name for a moment: keep retrying.
      notice("Your name is still held by your previous connection; retrying.");
      return;
    }
    if (friendly || error.code === "bad_key" || error.code === "bad_user") {
      signOut(friendly ? friendly(state.login.user) : error.message, error.code);
      return;
    }
    notice(error.fatal ? `Disconnected: ${error.message}` : error.message);
  }

  function transmit(entry) {
    const obj = { type: "send", text: entry.text, id: entry.id };
    if (entry.action) obj.action = true;
    send(obj); // or after the next welcome
  }

  function connectionLost(ws, code) {
    if (ws !== state.ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    state.ws = null;
    state.welcomed = false;
    historyDone();
    if (code === 1009 && state.pending.length) {
      // The server found a frame too big; drop the newest message rather than loop on it.
      const entry = state.pending[state.pending.length - 1];
      dropPending(entry.id);
      notice("Not sent: the message is too long for the server");
    }
    state.typers.clear();
    showTyping();
    ui.chat.classList.add("offline");
    if (state.login === null) return;
    const base = BACKOFF_MS[Math.min(state.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.75 + Math.random() / 2));
    state.attempt += 1;
    state.retryAt = Date.now() + delay;
    setStatus("offline", "offline");
    state.retryTimer = setTimeout(connect, delay);
    ui.offline.hidden = false;
    showCountdown();
    state.countdownTimer = setInterval(showCountdown, 250);
  }

  function showCountdown() {
    const seconds = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    const text = seconds ? `Offline, retrying in ${seconds} s` : "Offline, retrying now";
    if (ui.countdown.textContent !== text) ui.countdown.textContent = text;
  }

  function stopCountdown() {
    clearInterval(state.countdownTimer);
    ui.offline.hidden = true;
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
  function post(raw, action) {
    const clean = raw.replace(/\r\n?/g, "\n").replace(CONTROL_CHARS, " ").replace(/^\n+|\s+$/g, "");
    if (!clean.trim()) return true;
    const lines = clean.split("\n").length;
    if (lines > MAX_LINES) {
      notice(`That message has ${lines} lines; the limit is ${MAX_LINES}.`);
      return false;
    }
    const size = utf8Length(clean);
    if (size > state.maxTextBytes) {
      notice(`That message is ${size} bytes; the limit is ${state.maxTextBytes}.`);
      return false;
    }
    const entry = { id: `${state.idPrefix}-${state.nextId}`, text: clean, action, el: null };
    state.nextId += 1;
    state.pending.push(entry);
    showPending(entry);
    updateTop();
    transmit(entry);
    return true;
  }

  // `/me waves` is an action; `//text` sends "/text"; anything else is sent as it is.
  function submitComposer(event) {
    event.preventDefault();
    const value = ui.text.value;
    let sent;
    const me = /^\/me(?:\s+|$)/.exec(value);
    if (me) {
      const rest = value.slice(me[0].length);
      if (!rest.trim()) {
        notice("Type the action after /me, e.g. “/me waves”.");
        sent = false;
      } else {
        sent = post(rest, true);
      }
    } else {
      sent = post(value.startsWith("//") ? value.slice(1) : value, false);
    }
    if (sent) {
      ui.text.value = "";
      state.typingSentAt = -Infinity;
    }
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
    ui.notify.hidden = false;
    ui.who.textContent = login.user;
    ui.loginError.textContent = "";
    setMembersOpen(window.matchMedia(WIDE).matches);
    connect();
    ui.text.focus();
  }

  function signOut(reason, code) {
    const login = state.login || { user: "", key: "", token: "" };
    state.login = null;
    clearTimeout(state.retryTimer);
    stopCountdown();
    if (state.ws !== null) {
      const ws = state.ws;
      ws.onopen = ws.onmessage = ws.onclose = null;
      state.ws = null;
      ws.close(1000);
    }
    localStorage.removeItem(STORAGE_KEY);
    Object.assign(state, {
      pending: [],
      lastSeq: 0,
      oldestSeq: 0,
      lastDay: "",
      everWelcomed: false,
      welcomed: false,
      first: null,
      head: 0,
      replaying: false,
      unread: 0,
      verified: false,
    });
    historyDone();
    state.members.clear();
    state.typers.clear();
    showTyping();
    showUnread();
    ui.messages.replaceChildren();
    ui.outbox.replaceChildren();
    ui.chat.hidden = true;
    ui.signout.hidden = true;
    ui.notify.hidden = true;
    ui.membersToggle.hidden = true;
    ui.who.textContent = "";
    ui.login.hidden = false;
    ui.user.value = login.user;
    // A refused name or token keeps the key (only that needs changing); else it is asked again.
    ui.key.value = code === "name_taken" || code === "bad_token" ? login.key : "";
    ui.token.value = code === "name_taken" ? login.token : "";
    ui.loginError.textContent = reason || "";
    setStatus("signed-out", "signed out");
    if (code === "name_taken") {
      ui.user.focus();
      ui.user.select();
    } else if (code === "bad_token") {
      ui.token.focus();
    } else {
      (login.user ? ui.key : ui.user).focus();
    }
  }

  function submitLogin(event) {
    event.preventDefault();
    const login = { user: ui.user.value.trim(), key: ui.key.value.trim(), token: ui.token.value.trim() };
    if (!login.user || /\s/.test(login.user)) {
      ui.loginError.textContent = "Choose a name of 1 to 32 characters, without spaces.";
      ui.user.focus();
      return;
    }
    if (!login.key && !login.token) {
      ui.loginError.textContent = "Give the room key, or your personal token if you have an account.";
      ui.key.focus();
      return;
    }
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
        return { user: login.user, key: login.key, token: typeof login.token === "string" ? login.token : "" };
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
  ui.text.addEventListener("input", userTyped);
  ui.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      submitComposer(event); // Shift+Enter keeps the textarea's own newline
    }
  });
  ui.log.addEventListener("scroll", () => {
    readUp();
    if (ui.log.scrollTop < TOP_MARGIN_PX) loadOlder();
  });
  ui.older.addEventListener("click", loadOlder);
  ui.jump.addEventListener("click", () => {
    scrollToBottom();
    readUp();
    ui.text.focus();
  });
  ui.retry.addEventListener("click", reconnectNow);
  ui.membersToggle.addEventListener("click", () => {
    setMembersOpen(!state.membersOpen);
    if (state.membersOpen && !window.matchMedia(WIDE).matches) ui.membersClose.focus(); // into the sheet
  });
  ui.membersClose.addEventListener("click", () => {
    setMembersOpen(false);
    ui.membersToggle.focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.membersOpen && !window.matchMedia(WIDE).matches) {
      setMembersOpen(false); // the phone's sheet, like any sheet, goes away with Escape
      ui.membersToggle.focus();
    }
  });
  ui.notify.addEventListener("click", toggleNotify);
  ui.signout.addEventListener("click", () => signOut(""));
  window.addEventListener("online", reconnectNow);
  // Leaving the page says goodbye at once (others see the leave now, not after a timeout);
  // coming back to it from the browser's back/forward cache reconnects.
  window.addEventListener("pagehide", () => {
    const ws = state.ws;
    if (ws === null) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    state.ws = null;
    state.welcomed = false;
    ws.close(1000);
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) reconnectNow();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      reconnectNow();
      readUp();
    }
  });
  state.pingTimer = setInterval(keepAlive, PING_EVERY_MS);

  showNotify();
  setStatus("signed-out", "signed out");
  readLimits();
  const remembered = rememberedLogin();
  if (remembered) {
    start(remembered);
  } else {
    ui.login.hidden = false;
    ui.user.focus();
  }
})();
