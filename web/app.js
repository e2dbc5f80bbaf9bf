// clusterchat web client: vanilla ES module, no build step, nothing fetched from other hosts.
//
// Layout of this file:
//   1. Protocol: msgids, limits and error wording (shared/DESIGN.md §4)
//   2. Utilities: code points, txnids, WebSocket URL, time formatting, DOM helpers
//   3. ProtocolClient: one WebSocket, a reqid → promise map, pushes as events
//   4. Store: conversations, users, outbox, session, and the rules that merge messages into them
//   5. ChatApp: connection lifecycle (backoff, re-login), sync (history, catch-up, READ),
//      the outbox (txnid resend), user actions
//   6. View: render functions for the status, auth screen, sidebar, conversation, members
//   7. Wiring: DOM events → ChatApp, start-up
//
// Delivery (DESIGN.md §5) from the client's side: every send carries a txnid and stays pending
// until its ack; unacked sends are resent with the same txnid after a reconnect; every
// conversation keeps `lastSeq`, the seq up to which it is caught up, and fetches HISTORY
// after_seq = lastSeq after a re-login, on RESYNC_MSG and when a seq gap shows; messages are
// de-duplicated by message_id.

// ───────────────────────────── 1. Protocol ─────────────────────────────

export const MSG = Object.freeze({
  LOGIN: 1, LOGIN_ACK: 2, LOGOUT: 3, REG: 4, REG_ACK: 5, ONE_CHAT: 6, ADD_FRIEND: 7,
  CREATE_GROUP: 8, ADD_GROUP: 9, GROUP_CHAT: 10, ACK: 11, DEL_FRIEND: 12, QUIT_GROUP: 13,
  FRIEND_LIST: 14, GROUP_LIST: 15, GROUP_MEMBERS: 16, HISTORY: 17, READ: 18, PRESENCE: 19,
  ERROR: 20, RESYNC: 21,
});

const LIMITS = Object.freeze({ msg: 4000, name: 64, groupdesc: 200, password: 1024 });
const NEWEST_PAGE = 50;         // messages shown when a conversation opens
const OLDER_PAGE = 50;          // messages added per scroll to the top
const CATCHUP_PAGE = 200;       // the protocol's largest page, for catching up after gaps
const REQUEST_TIMEOUT_MS = 20_000;
const BACKOFF_BASE_MS = 300;
const BACKOFF_CAP_MS = 5_000;
const GAP_GRACE_MS = 400;       // pushes of one conversation may overtake each other briefly
const READ_DEBOUNCE_MS = 200;
const REFRESH_INTERVAL_MS = 60_000; // friend/group lists: the protocol pushes no friendship changes
const SEND_RETRY_MS = 1_500;    // after 429/500/503 on a send
const MAX_SEND_RETRIES = 8;

/** Plain-words text per action and errno; falls back to GENERIC_ERRORS, then to errmsg. */
const ERROR_TEXT = {
  login: { 1: 'Wrong name, id or password', 409: 'Already logged in' },
  register: { 2: 'That name is already taken' },
  addFriend: { 404: 'No such user', 409: 'Already friends', 400: 'You can’t add yourself as a friend' },
  deleteFriend: { 404: 'No such friend', 400: 'That is not a valid friend id' },
  createGroup: { 2: 'That group name is already taken' },
  joinGroup: { 404: 'No such group', 409: 'You are already a member of this group' },
  quitGroup: { 403: 'You are not a member of this group', 404: 'No such group' },
  members: { 403: 'You are not a member of this group', 404: 'No such group' },
  send: {
    403: 'You are not a member of this group', 404: 'No such user or group',
    409: 'This message conflicts with an earlier one', 413: 'Message is too large',
  },
  history: { 403: 'You are not a member of this group', 404: 'This conversation no longer exists' },
};
const GENERIC_ERRORS = {
  1: 'Wrong name, id or password',
  2: 'That name is already taken',
  401: 'You are not logged in',
  403: 'You are not allowed to do that',
  404: 'Not found',
  409: 'That conflicts with the current state',
  413: 'That is too large to send',
  429: 'Too many requests: please slow down',
  500: 'The server had an internal error. Please try again.',
  503: 'The service is temporarily unavailable. Please try again.',
};

// ───────────────────────────── 2. Utilities ─────────────────────────────

/** Length in Unicode code points, as the protocol counts (not UTF-16 units). */
const codePoints = (s) => { let n = 0; for (const _ of s) n++; return n; };
// eslint-disable-next-line no-control-regex
const hasControlChars = (s) => /[\u0000-\u001f\u007f-\u009f]/.test(s);

/** A random txnid (34 chars ≤ 64); getRandomValues works outside secure contexts too. */
function newTxnid() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return 'w-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** ws(s)://same-host/ws from the page's own location: works on any port and behind nginx. */
export function webSocketUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

const isSafeInt = (v) => Number.isSafeInteger(v);
const parseId = (text) => (/^\s*\d{1,16}\s*$/.test(text) ? Number(text.trim()) : null);

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
const shortDayFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const weekdayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'short' });

const localDayKey = (d) => `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (localDayKey(d) === localDayKey(today)) return 'Today';
  if (localDayKey(d) === localDayKey(yesterday)) return 'Yesterday';
  return dayFormat.format(d);
}
/** Compact time for the conversation list: today → 14:05, this week → Tue, else 3 Nov. */
function listTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const now = new Date();
  if (localDayKey(d) === localDayKey(now)) return timeFormat.format(d);
  if (now - d < 6 * 86_400_000) return weekdayFormat.format(d);
  return shortDayFormat.format(d);
}

/** Element factory: h('div', {class: 'x', onclick: f, dataset: {a: 1}}, 'text', child). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') el.style.cssText = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c != null && c !== false) el.append(c);
  return el;
}

/**
 * Keyed list rendering: makes `container`'s children match `items` in order, reusing the element
 * of every key already present (so scroll position, focus and selection survive) and removing the
 * rest. `create(item)` builds a new element, `update(el, item)` refreshes one.
 */
function reconcile(container, items, { key, create, update }) {
  const existing = new Map();
  for (const child of container.children) existing.set(child.dataset.key, child);
  const kept = new Set();
  let cursor = container.firstElementChild;
  for (const item of items) {
    const k = key(item);
    kept.add(k);
    let el = existing.get(k);
    if (!el) {
      el = create(item);
      el.dataset.key = k;
    }
    update(el, item);
    if (el === cursor) cursor = cursor.nextElementSibling;
    else container.insertBefore(el, cursor);
  }
  for (const [k, el] of existing) if (!kept.has(k)) el.remove();
}

function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const first = [...(parts[0] || '?')][0] || '?';
  const second = parts.length > 1 ? [...parts[1]][0] : '';
  return (first + (second || '')).toUpperCase();
}
const hueOf = (n) => (Math.abs(Number(n) || 0) * 47 + 210) % 360;

function paintAvatar(el, name, id, kind = 'user') {
  el.textContent = kind === 'group' ? '#' : initials(name);
  el.style.setProperty('--hue', String(hueOf(id)));
  el.classList.toggle('avatar-group', kind === 'group');
}

/** Message text as DOM: plain text, http(s) links made clickable (never HTML from the wire). */
function richText(text) {
  const frag = document.createDocumentFragment();
  const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
  let at = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > at) frag.append(text.slice(at, m.index));
    frag.append(h('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    at = m.index + m[0].length;
  }
  if (at < text.length) frag.append(text.slice(at));
  return frag;
}

// ───────────────────────────── 3. ProtocolClient ─────────────────────────────

/** A reply with errno ≠ 0. */
export class ServerError extends Error {
  constructor(reply) {
    super(reply.errmsg || `Error ${reply.errno}`);
    this.name = 'ServerError';
    this.errno = reply.errno;
    this.reply = reply;
  }
}
/** The socket closed (or was not open) before the reply came. */
export class ConnectionLost extends Error {
  constructor(message = 'Not connected to the server') { super(message); this.name = 'ConnectionLost'; }
}
/** No reply within REQUEST_TIMEOUT_MS: the connection is treated as dead. */
export class RequestTimeout extends Error {
  constructor() { super('The server did not answer in time'); this.name = 'RequestTimeout'; }
}

/**
 * One WebSocket speaking the msgid protocol. `request()` stamps a fresh reqid and resolves with
 * the reply that carries it (rejects with ServerError when errno ≠ 0). Frames that answer no
 * pending request are dispatched as `push` events. Events: `open`, `close` ({code, wasOpen}),
 * `push` (the frame), `timeout`.
 */
export class ProtocolClient extends EventTarget {
  #ws = null;
  #nextReqid = 1;
  /** reqid → {resolve, reject, timer} */
  #pending = new Map();

  constructor(url) {
    super();
    this.url = url;
  }

  get connected() { return this.#ws?.readyState === WebSocket.OPEN; }
  get connecting() { return this.#ws?.readyState === WebSocket.CONNECTING; }

  /** Opens the socket; resolves once open, rejects if it closes first. */
  connect() {
    if (this.#ws) return Promise.reject(new Error('already connected'));
    const ws = new WebSocket(this.url); // throws on an unusable URL (e.g. a file:// page)
    this.#ws = ws;
    return new Promise((resolve, reject) => {
      let opened = false;
      ws.addEventListener('open', () => {
        if (this.#ws !== ws) return;
        opened = true;
        resolve();
        this.#emit('open');
      });
      ws.addEventListener('message', (ev) => {
        if (this.#ws === ws) this.#onFrame(ev.data);
      });
      ws.addEventListener('close', (ev) => {
        if (!opened) reject(new ConnectionLost(`Could not connect (code ${ev.code})`));
        if (this.#ws !== ws) return; // dropped earlier: already reported
        this.#ws = null;
        this.#failPending(new ConnectionLost('Connection lost'));
        this.#emit('close', { code: ev.code, reason: ev.reason, wasOpen: opened });
      });
    });
  }

  /** Closes at once from our side (dead or misbehaving link); reports `close` synchronously. */
  drop(reason = '') {
    const ws = this.#ws;
    if (!ws) return;
    this.#ws = null;
    this.#failPending(new ConnectionLost('Connection lost'));
    try { ws.close(4000, reason.slice(0, 100)); } catch { /* already closing */ }
    this.#emit('close', { code: 4000, reason, wasOpen: true });
  }

  /** Sends {msgid, reqid, ...fields} and waits for the reply carrying the same reqid. */
  request(msgid, fields = {}, { timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
    if (!this.connected) return Promise.reject(new ConnectionLost());
    const reqid = this.#nextReqid++;
    const frame = JSON.stringify({ ...fields, msgid, reqid });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this.#pending.delete(reqid)) return;
        reject(new RequestTimeout());
        this.#emit('timeout', { msgid, reqid });
      }, timeoutMs);
      this.#pending.set(reqid, { resolve, reject, timer });
      this.#ws.send(frame);
    });
  }

  #onFrame(data) {
    if (typeof data !== 'string') return;
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) return;
    const waiter = Number.isInteger(frame.reqid) ? this.#pending.get(frame.reqid) : undefined;
    if (waiter) {
      this.#pending.delete(frame.reqid);
      clearTimeout(waiter.timer);
      if (frame.errno) waiter.reject(new ServerError(frame));
      else waiter.resolve(frame);
      return;
    }
    this.#emit('push', frame);
  }

  #failPending(error) {
    const waiters = [...this.#pending.values()];
    this.#pending.clear();
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.reject(error);
    }
  }

  #emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}

// ───────────────────────────── 4. Store ─────────────────────────────

const convKey = (kind, id) => `${kind === 'group' ? 'g' : 'u'}:${id}`;

function isChat(f) {
  return (f.msgid === MSG.ONE_CHAT || f.msgid === MSG.GROUP_CHAT) && isSafeInt(f.message_id)
    && isSafeInt(f.seq) && isSafeInt(f.id) && typeof f.msg === 'string'
    && (f.msgid === MSG.GROUP_CHAT ? isSafeInt(f.groupid) : isSafeInt(f.toid));
}

/** One 1:1 or group conversation as this tab knows it. */
class Conversation {
  constructor(kind, id) {
    this.kind = kind;              // 'user' | 'group'
    this.id = id;                  // peer user id or group id
    this.key = convKey(kind, id);
    this.name = kind === 'group' ? `Group ${id}` : `User ${id}`;
    this.desc = '';                // groups: groupdesc
    this.members = [];             // groups: [{id, name, state, role}] as last reported
    this.isFriend = false;         // users: in our friend list (else a conversation with a stranger)
    this.byId = new Map();         // message_id → chat
    this.bySeq = new Map();        // seq → chat
    this.maxSeq = 0;               // highest seq held
    this.newest = null;            // chat with the highest seq (preview, ordering)
    /** Caught up to here: every message with seq ≤ lastSeq that matters is held (null: unknown). */
    this.lastSeq = null;
    this.windowStart = null;       // lowest seq of the contiguous page(s) shown; null: not loaded
    this.moreBefore = false;       // HISTORY said older messages exist below windowStart
    this.loaded = false;           // the newest page has been fetched for display
    this.loading = false;
    this.loadingOlder = false;
    this.readSeq = null;           // read up to here (local view; null: unknown)
    this.readSent = 0;             // highest seq sent in READ_MSG
    this.syncing = false;          // a baseline or catch-up is running
    this.syncAgain = false;        // …and another was asked for meanwhile
    this.gapTimer = 0;
  }

  get target() { return this.kind === 'group' ? { groupid: this.id } : { toid: this.id }; }

  /** Adds a chat unless its message_id is known; returns whether it was new. */
  add(chat, live) {
    if (this.byId.has(chat.message_id)) return false;
    const m = { ...chat, live };
    this.byId.set(m.message_id, m);
    this.bySeq.set(m.seq, m);
    if (m.seq > this.maxSeq) {
      this.maxSeq = m.seq;
      this.newest = m;
    }
    this.advance();
    return true;
  }

  /** Moves lastSeq over every seq now held contiguously above it. */
  advance() {
    if (this.lastSeq === null) return;
    while (this.bySeq.has(this.lastSeq + 1)) this.lastSeq++;
  }

  /** A newest-page reply: nothing above its last seq existed when it was read. */
  noteNewestPage(messages) {
    const top = messages.length ? messages[messages.length - 1].seq : 0;
    if (this.lastSeq === null) this.lastSeq = top;
    else if (!messages.length || messages[0].seq <= this.lastSeq + 1) this.lastSeq = Math.max(this.lastSeq, top);
    this.advance();
  }

  get hasGap() { return this.lastSeq !== null && this.maxSeq > this.lastSeq; }

  /** Held messages with seq > from, ascending; walks whichever is shorter, the range or the map. */
  above(from) {
    if (this.maxSeq - from <= this.bySeq.size) {
      const out = [];
      for (let s = from + 1; s <= this.maxSeq; s++) {
        const m = this.bySeq.get(s);
        if (m) out.push(m);
      }
      return out;
    }
    return [...this.bySeq.values()].filter((m) => m.seq > from).sort((a, b) => a.seq - b.seq);
  }

  unread(myId) {
    let n = 0;
    for (const m of this.above(this.readSeq ?? 0)) if (m.id !== myId) n++;
    return n;
  }

  /** Messages shown in the log: the loaded window, ascending seq. */
  visible() {
    return this.windowStart === null ? [] : this.above(this.windowStart - 1);
  }
}

/** Everything the page shows, plus change notification (render is scheduled on `changed()`). */
class Store {
  constructor() {
    this.listeners = new Set();
    this.conn = 'connecting';        // 'connecting' | 'online' | 'reconnecting' | 'unavailable'
    this.notice = null;              // {text, kind: 'error'|'info'}
    this.authBusy = false;
    this.resetSession();
  }

  resetSession() {
    this.session = null;             // {id, name, node} once logged in
    this.convs = new Map();          // key → Conversation
    this.users = new Map();          // id → {id, name, state}: everyone heard of
    this.activeKey = null;
    this.outbox = new Map();         // txnid → {txnid, key, kind, target, text, status, error, ...}
    this.members = null;             // {groupId, users, loading} while the panel is open
    this.atBottom = true;            // the log is scrolled to its end (set by the view)
  }

  subscribe(fn) { this.listeners.add(fn); }
  changed() { for (const fn of this.listeners) fn(); }

  get myId() { return this.session?.id ?? null; }
  active() { return this.activeKey ? this.convs.get(this.activeKey) ?? null : null; }

  notify(text, kind = 'error') {
    this.notice = text ? { text, kind, at: Date.now() } : null;
    this.changed();
  }

  ensureConv(kind, id) {
    const key = convKey(kind, id);
    let conv = this.convs.get(key);
    if (!conv) {
      conv = new Conversation(kind, id);
      if (kind === 'user') {
        const u = this.users.get(id);
        if (u) conv.name = u.name;
        else if (id === this.myId) conv.name = this.session.name;
      }
      this.convs.set(key, conv);
    }
    return conv;
  }

  removeConv(key) {
    const conv = this.convs.get(key);
    if (!conv) return;
    clearTimeout(conv.gapTimer);
    this.convs.delete(key);
    for (const [txnid, out] of this.outbox) if (out.key === key) this.outbox.delete(txnid);
    if (this.activeKey === key) this.activeKey = null;
    if (this.members && conv.kind === 'group' && this.members.groupId === conv.id) this.members = null;
  }

  rememberUser(u) {
    if (!u || !isSafeInt(u.id)) return;
    const old = this.users.get(u.id);
    const merged = {
      id: u.id,
      name: typeof u.name === 'string' && u.name ? u.name : old?.name ?? `User ${u.id}`,
      state: u.state === 'online' || u.state === 'offline' ? u.state : old?.state ?? 'offline',
    };
    this.users.set(u.id, merged);
    const conv = this.convs.get(convKey('user', u.id));
    if (conv) conv.name = merged.name;
    return merged;
  }

  /** The friend list (login or FRIEND_LIST_MSG): returns conversations that are new. */
  applyFriends(friends) {
    const fresh = [];
    const ids = new Set();
    for (const f of friends) {
      if (!isSafeInt(f?.id)) continue;
      ids.add(f.id);
      this.rememberUser(f);
      const key = convKey('user', f.id);
      if (!this.convs.has(key)) fresh.push(this.ensureConv('user', f.id));
      this.convs.get(key).isFriend = true;
    }
    for (const conv of [...this.convs.values()]) {
      if (conv.kind !== 'user' || !conv.isFriend || ids.has(conv.id)) continue;
      conv.isFriend = false; // unfriended elsewhere: keep the conversation only if it has messages
      if (!conv.byId.size && this.activeKey !== conv.key) this.removeConv(conv.key);
    }
    return fresh;
  }

  applyGroup(g) {
    if (!isSafeInt(g?.id)) return null;
    const conv = this.ensureConv('group', g.id);
    if (typeof g.groupname === 'string') conv.name = g.groupname;
    if (typeof g.groupdesc === 'string') conv.desc = g.groupdesc;
    if (Array.isArray(g.users)) {
      conv.members = g.users.filter((u) => isSafeInt(u?.id)).map((u) => ({ ...u }));
      for (const u of conv.members) this.rememberUser(u);
    }
    return conv;
  }

  /** The group list (login or GROUP_LIST_MSG): returns conversations that are new. */
  applyGroups(groups) {
    const fresh = [];
    const ids = new Set();
    for (const g of groups) {
      if (!isSafeInt(g?.id)) continue;
      ids.add(g.id);
      const isNew = !this.convs.has(convKey('group', g.id));
      const conv = this.applyGroup(g);
      if (isNew && conv) fresh.push(conv);
    }
    for (const conv of [...this.convs.values()]) {
      if (conv.kind === 'group' && !ids.has(conv.id)) this.removeConv(conv.key); // quit elsewhere
    }
    return fresh;
  }

  /** Which conversation a chat belongs to, created when first seen. */
  convForChat(chat) {
    if (chat.msgid === MSG.GROUP_CHAT) return this.ensureConv('group', chat.groupid);
    const mine = chat.id === this.myId;
    const peer = mine ? chat.toid : chat.id;
    if (!mine && chat.name) this.rememberUser({ id: chat.id, name: chat.name });
    const conv = this.ensureConv('user', peer);
    if (!mine && chat.name) conv.name = chat.name;
    return conv;
  }

  /** Merges one chat (push, offline, history or own ack); de-duplicates by message_id. */
  ingest(chat, source) {
    if (!isChat(chat)) return { conv: null, added: false };
    const conv = this.convForChat(chat);
    const added = conv.add(chat, source === 'push' || source === 'offline');
    return { conv, added };
  }

  /** offlinemsg of a login reply: unread messages, counted from just below the oldest of each. */
  ingestOffline(list) {
    const lowest = new Map();
    for (const chat of list) {
      const { conv } = this.ingest(chat, 'offline');
      if (!conv) continue;
      lowest.set(conv, Math.min(lowest.get(conv) ?? Infinity, chat.seq));
    }
    // After a re-login the local read point stands: it may be ahead of a READ that was lost.
    for (const [conv, seq] of lowest) if (conv.readSeq === null) conv.readSeq = seq - 1;
  }

  applyPresence(p) {
    if (!isSafeInt(p.id) || (p.state !== 'online' && p.state !== 'offline')) return false;
    const known = this.users.has(p.id);
    this.rememberUser({ id: p.id, name: p.name, state: p.state });
    for (const conv of this.convs.values()) {
      if (conv.kind !== 'group') continue;
      for (const m of conv.members) if (m.id === p.id) m.state = p.state;
    }
    if (this.members) for (const m of this.members.users) if (m.id === p.id) m.state = p.state;
    return known;
  }

  stateOf(userId) {
    if (userId === this.myId) return 'online';
    return this.users.get(userId)?.state ?? 'offline';
  }

  /** Conversations for the sidebar: most recent activity first, then online friends, then names. */
  sortedConvs() {
    const stamp = (c) => {
      let t = c.newest?.time ?? '';
      for (const out of this.outbox.values()) if (out.key === c.key && out.timeIso > t) t = out.timeIso;
      return t;
    };
    return [...this.convs.values()]
      .filter((c) => c.kind === 'group' || c.isFriend || c.byId.size || c.key === this.activeKey
        || [...this.outbox.values()].some((o) => o.key === c.key))
      .map((c) => ({ c, t: stamp(c) }))
      .sort((a, b) => (b.t > a.t ? 1 : b.t < a.t ? -1 : 0)
        || (this.stateOf(b.c.id) === 'online' && b.c.kind === 'user') - (this.stateOf(a.c.id) === 'online' && a.c.kind === 'user')
        || a.c.name.localeCompare(b.c.name))
      .map(({ c }) => c);
  }

  pendingFor(key) {
    return [...this.outbox.values()].filter((o) => o.key === key);
  }
}

// ───────────────────────────── 5. ChatApp ─────────────────────────────

function describeError(e, action) {
  if (e instanceof ConnectionLost) return 'Not connected to the server. Please try again in a moment.';
  if (e instanceof RequestTimeout) return 'The server did not answer in time. Please try again.';
  if (!(e instanceof ServerError)) return `Something went wrong: ${e?.message ?? e}`;
  const specific = ERROR_TEXT[action]?.[e.errno];
  if (specific) return specific;
  if (e.errno === 400) return e.message ? `Invalid request: ${e.message}` : 'Invalid request';
  return GENERIC_ERRORS[e.errno] ?? (e.message || `Error ${e.errno}`);
}

class ChatApp {
  constructor(store, client) {
    this.store = store;
    this.client = client;
    this.credentials = null;   // {id, password}: in memory only, for re-login after a reconnect
    this.ready = false;        // logged in on the current socket
    this.loggingIn = false;    // a LOGIN_MSG is in flight: pushes wait in pushBuffer
    this.pushBuffer = [];
    this.attempt = 0;          // reconnect attempts since the last successful login
    this.reconnectTimer = 0;
    this.openWaiters = [];     // resolvers waiting for the socket to open
    this.readTimer = 0;
    this.refreshTimers = { friends: 0, groups: 0, periodic: 0 };
    this.sendRetryTimer = 0;

    client.addEventListener('push', (e) => this.onPush(e.detail));
    client.addEventListener('close', (e) => this.onClose(e.detail));
    client.addEventListener('timeout', () => this.client.drop('request timed out'));
  }

  start() {
    this.connect();
    window.addEventListener('online', () => this.reconnectNow());
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) return;
      this.reconnectNow();
      if (this.ready) this.refreshLists();
      this.scheduleMarkRead();
    });
  }

  // ── connection lifecycle ──

  async connect() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = 0;
    if (this.client.connected || this.client.connecting) return;
    const s = this.store;
    try {
      await this.client.connect();
    } catch (e) {
      if (!(e instanceof ConnectionLost)) {
        // The URL itself is unusable (the page was opened from a file): nothing to retry.
        s.conn = 'unavailable';
        s.notify('Cannot reach the chat server: open this page from the server’s address.');
      }
      return; // a close after a failed open schedules the next attempt (onClose)
    }
    for (const resolve of this.openWaiters.splice(0)) resolve();
    if (this.credentials) {
      await this.relogin(); // "Reconnecting…" stays until we are logged back in
    } else {
      this.attempt = 0;
      s.conn = 'online';
      s.changed();
    }
  }

  onClose() {
    const s = this.store;
    this.ready = false;
    this.loggingIn = false;
    this.pushBuffer = [];
    s.conn = 'reconnecting';
    s.changed();
    this.scheduleReconnect();
  }

  /** Exponential backoff with jitter: 150–300 ms, 300–600 ms, … capped at 2.5–5 s. */
  scheduleReconnect() {
    if (this.reconnectTimer) return;
    const base = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 16);
    const delay = base / 2 + Math.random() * (base / 2);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = 0;
      this.connect();
    }, delay);
  }

  /** Skips the wait (tab visible again, network back). */
  reconnectNow() {
    if (this.client.connected || this.client.connecting || this.store.conn === 'unavailable') return;
    this.connect();
  }

  /** Resolves when the socket is open (or after timeoutMs, then requests fail with ConnectionLost). */
  whenOpen(timeoutMs = 8000) {
    if (this.client.connected) return Promise.resolve();
    this.reconnectNow();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.openWaiters.push(() => { clearTimeout(timer); resolve(); });
    });
  }

  async loginRequest(fields) {
    this.loggingIn = true;
    this.pushBuffer = [];
    try {
      return await this.client.request(MSG.LOGIN, fields);
    } catch (e) {
      this.loggingIn = false;
      this.pushBuffer = [];
      throw e;
    }
  }

  async relogin() {
    const { id, password } = this.credentials;
    try {
      const ack = await this.loginRequest({ id, password });
      this.attempt = 0;
      this.afterLogin(ack, true);
    } catch (e) {
      if (e instanceof ServerError && e.errno === 1) {
        this.endSession();
        this.store.conn = 'online';
        this.store.notify('Your session has ended: please log in again.');
        return;
      }
      // 503, 500, 429, a timeout: try again on a fresh connection after the backoff.
      if (e instanceof ServerError) this.client.drop('re-login failed');
    }
  }

  /** LOGIN_MSG_ACK: session, friends, groups, unread backlog, then catch up and resend. */
  afterLogin(ack, relogin) {
    const s = this.store;
    if (relogin && s.session && ack.id !== s.session.id) {
      // Should never happen (we log back in by id); start clean rather than mix two users.
      s.resetSession();
    }
    s.session = { id: ack.id, name: ack.name ?? '', node: ack.node ?? '' };
    s.conn = 'online';
    this.ready = true;
    this.loggingIn = false;
    s.rememberUser({ id: ack.id, name: ack.name, state: 'online' });
    s.applyFriends(Array.isArray(ack.friends) ? ack.friends : []);
    s.applyGroups(Array.isArray(ack.groups) ? ack.groups : []);
    s.ingestOffline(Array.isArray(ack.offlinemsg) ? ack.offlinemsg : []);
    for (const frame of this.pushBuffer.splice(0)) this.onPush(frame);
    s.changed();

    for (const conv of s.convs.values()) this.sync(conv);
    this.flushOutbox();
    const active = s.active();
    if (active && !active.loaded) this.loadNewest(active);
    this.scheduleMarkRead();
    clearInterval(this.refreshTimers.periodic);
    this.refreshTimers.periodic = setInterval(() => {
      if (this.ready && !document.hidden) this.refreshLists();
    }, REFRESH_INTERVAL_MS);
  }

  endSession() {
    this.credentials = null;
    this.ready = false;
    clearInterval(this.refreshTimers.periodic);
    clearTimeout(this.sendRetryTimer);
    for (const conv of this.store.convs.values()) clearTimeout(conv.gapTimer);
    this.store.resetSession();
    this.store.changed();
  }

  // ── pushes ──

  onPush(frame) {
    if (this.loggingIn) {
      this.pushBuffer.push(frame);
      return;
    }
    const s = this.store;
    switch (frame.msgid) {
      case MSG.ONE_CHAT:
      case MSG.GROUP_CHAT:
        if (this.ready) this.onChat(frame);
        break;
      case MSG.PRESENCE:
        if (!this.ready) break;
        if (!s.applyPresence(frame)) this.refreshFriendsSoon(); // a stranger: maybe a new friend
        s.changed();
        break;
      case MSG.RESYNC:
        if (this.ready) for (const conv of s.convs.values()) this.sync(conv);
        break;
      case MSG.ERROR:
        s.notify(describeError(new ServerError(frame), 'frame'));
        break;
      default:
        break; // late replies of timed-out requests, unknown pushes: nothing to do
    }
  }

  onChat(chat) {
    const s = this.store;
    const isGroup = chat.msgid === MSG.GROUP_CHAT;
    const knownBefore = isGroup ? s.convs.has(convKey('group', chat.groupid)) : true;
    const { conv, added } = s.ingest(chat, 'push');
    if (!conv || !added) return;
    if (isGroup && !knownBefore) this.refreshGroupsSoon(); // joined from another device
    if (!isGroup && !conv.isFriend && conv.id !== s.myId) this.refreshFriendsSoon();
    if (conv.lastSeq === null) this.sync(conv);
    else if (conv.hasGap) this.scheduleGapCheck(conv);
    if (conv.key === s.activeKey) this.scheduleMarkRead();
    s.changed();
  }

  // ── history, catch-up, read cursors ──

  history(conv, fields) {
    return this.client.request(MSG.HISTORY, { ...conv.target, ...fields });
  }

  /** Baseline for a conversation never synced, else catch-up after lastSeq. One at a time. */
  async sync(conv) {
    if (!this.ready) return;
    if (conv.syncing) {
      conv.syncAgain = true;
      return;
    }
    conv.syncing = true;
    try {
      if (conv.lastSeq === null) await this.fetchBaseline(conv);
      else await this.catchUp(conv);
    } catch (e) {
      this.onConversationError(conv, e);
    } finally {
      conv.syncing = false;
      if (conv.syncAgain && this.store.convs.get(conv.key) === conv) {
        conv.syncAgain = false;
        this.sync(conv);
      }
    }
  }

  /** The newest message only: sets lastSeq (and, if unknown, the read point) cheaply. */
  async fetchBaseline(conv) {
    const r = await this.history(conv, { limit: 1 });
    const msgs = Array.isArray(r.messages) ? r.messages.filter(isChat) : [];
    const before = new Set(conv.byId.keys());
    for (const m of msgs) this.store.ingest(m, 'history');
    conv.noteNewestPage(msgs);
    if (conv.readSeq === null) {
      // Not in offlinemsg, so read up to the newest, unless that one just came in live.
      const top = msgs[msgs.length - 1];
      conv.readSeq = !top ? 0 : before.has(top.message_id) && conv.byId.get(top.message_id).live ? top.seq - 1 : top.seq;
    }
    if (conv.hasGap) await this.catchUp(conv);
    this.afterConversationChange(conv);
  }

  /** HISTORY after_seq = lastSeq until `more` is false. */
  async catchUp(conv) {
    while (this.ready && conv.lastSeq !== null) {
      const r = await this.history(conv, { after_seq: conv.lastSeq, limit: CATCHUP_PAGE });
      const msgs = Array.isArray(r.messages) ? r.messages.filter(isChat) : [];
      for (const m of msgs) this.store.ingest(m, 'history');
      if (!msgs.length) break;
      conv.lastSeq = Math.max(conv.lastSeq, msgs[msgs.length - 1].seq);
      conv.advance();
      if (!r.more) break;
    }
    this.afterConversationChange(conv);
  }

  scheduleGapCheck(conv) {
    if (conv.gapTimer) return;
    conv.gapTimer = setTimeout(() => {
      conv.gapTimer = 0;
      if (conv.hasGap) this.sync(conv);
    }, GAP_GRACE_MS);
  }

  afterConversationChange(conv) {
    if (conv.key === this.store.activeKey) this.scheduleMarkRead();
    this.store.changed();
  }

  /** 403/404 on a conversation: we are no longer in that group (or it is gone). */
  onConversationError(conv, e) {
    if (e instanceof ServerError && conv.kind === 'group' && (e.errno === 403 || e.errno === 404)) {
      this.store.removeConv(conv.key);
      this.store.notify(`You are no longer a member of “${conv.name}”.`, 'info');
      this.refreshGroupsSoon();
    } else if (e instanceof ServerError) {
      this.store.notify(describeError(e, 'history'));
    }
    // ConnectionLost / RequestTimeout: the next login catches up.
  }

  async loadNewest(conv) {
    if (conv.loading || !this.ready) return;
    conv.loading = true;
    this.store.changed();
    try {
      const r = await this.history(conv, { limit: NEWEST_PAGE });
      const msgs = Array.isArray(r.messages) ? r.messages.filter(isChat) : [];
      for (const m of msgs) this.store.ingest(m, 'history');
      conv.windowStart = Math.min(conv.windowStart ?? Infinity, msgs.length ? msgs[0].seq : conv.maxSeq ? 1 : 0);
      conv.moreBefore = msgs.length > 0 && Boolean(r.more);
      conv.noteNewestPage(msgs);
      conv.loaded = true;
      if (conv.hasGap) this.scheduleGapCheck(conv);
    } catch (e) {
      this.onConversationError(conv, e);
    } finally {
      conv.loading = false;
      this.afterConversationChange(conv);
      if (conv.loaded && conv.key === this.store.activeKey) this.markRead(true);
    }
  }

  async loadOlder(conv) {
    if (!conv.loaded || conv.loadingOlder || !conv.moreBefore || !this.ready) return;
    conv.loadingOlder = true;
    this.store.changed();
    try {
      const r = await this.history(conv, { before_seq: conv.windowStart, limit: OLDER_PAGE });
      const msgs = Array.isArray(r.messages) ? r.messages.filter(isChat) : [];
      for (const m of msgs) this.store.ingest(m, 'history');
      if (msgs.length) conv.windowStart = Math.min(conv.windowStart, msgs[0].seq);
      conv.moreBefore = msgs.length > 0 && Boolean(r.more);
    } catch (e) {
      this.onConversationError(conv, e);
    } finally {
      conv.loadingOlder = false;
      this.store.changed();
    }
  }

  scheduleMarkRead() {
    clearTimeout(this.readTimer);
    this.readTimer = setTimeout(() => this.markRead(), READ_DEBOUNCE_MS);
  }

  /**
   * The open conversation, scrolled to its end, in a visible tab, is read: READ_MSG. `opening`:
   * it has just been opened (or its newest page just came), so it is shown at its end.
   */
  markRead(opening = false) {
    const s = this.store;
    const conv = s.active();
    if (!conv || !conv.loaded || document.hidden || !(s.atBottom || opening)) return;
    const top = conv.maxSeq;
    if (top > (conv.readSeq ?? 0)) {
      conv.readSeq = top;
      s.changed();
    }
    if (top > conv.readSent && this.ready) {
      const previous = conv.readSent;
      conv.readSent = top;
      this.client.request(MSG.READ, { ...conv.target, seq: top }).catch(() => {
        if (conv.readSent === top) conv.readSent = previous; // resent after the next login
      });
    }
  }

  // ── friend and group lists ──

  refreshFriendsSoon() {
    clearTimeout(this.refreshTimers.friends);
    this.refreshTimers.friends = setTimeout(() => this.refreshFriends(), 300);
  }
  refreshGroupsSoon() {
    clearTimeout(this.refreshTimers.groups);
    this.refreshTimers.groups = setTimeout(() => this.refreshGroups(), 300);
  }
  refreshLists() {
    this.refreshFriends();
    this.refreshGroups();
  }

  async refreshFriends() {
    if (!this.ready) return;
    try {
      const r = await this.client.request(MSG.FRIEND_LIST);
      const fresh = this.store.applyFriends(Array.isArray(r.friends) ? r.friends : []);
      for (const conv of fresh) this.sync(conv);
      this.store.changed();
    } catch { /* best effort */ }
  }

  async refreshGroups() {
    if (!this.ready) return;
    try {
      const r = await this.client.request(MSG.GROUP_LIST);
      const fresh = this.store.applyGroups(Array.isArray(r.groups) ? r.groups : []);
      for (const conv of fresh) this.sync(conv);
      this.store.changed();
    } catch { /* best effort */ }
  }

  // ── the outbox: every send has a txnid and stays pending until acked ──

  send(text) {
    const s = this.store;
    const conv = s.active();
    if (!conv) return false;
    const body = text.trim();
    if (!body) {
      s.notify('Message is empty');
      return false;
    }
    if (codePoints(body) > LIMITS.msg) {
      s.notify(`Message is too long: at most ${LIMITS.msg.toLocaleString()} characters`);
      return false;
    }
    const out = {
      txnid: newTxnid(), key: conv.key, kind: conv.kind, target: conv.target, text: body,
      status: 'pending', error: null, retries: 0, inFlight: false, timeIso: new Date().toISOString(),
    };
    s.outbox.set(out.txnid, out);
    if (s.notice?.kind === 'error') s.notice = null;
    s.atBottom = true; // your own message scrolls the log to its end
    s.changed();
    this.flushOutbox();
    return true;
  }

  /** (Re)sends every pending message in order; the server keeps one connection's order. */
  flushOutbox() {
    if (!this.ready) return;
    for (const out of this.store.outbox.values()) {
      if (out.status === 'pending' && !out.inFlight) this.transmit(out);
    }
  }

  async transmit(out) {
    const s = this.store;
    out.inFlight = true;
    const msgid = out.kind === 'group' ? MSG.GROUP_CHAT : MSG.ONE_CHAT;
    try {
      const ack = await this.client.request(msgid, { ...out.target, msg: out.text, txnid: out.txnid });
      s.outbox.delete(out.txnid);
      const me = s.session;
      if (!me) return;
      const chat = { msgid, message_id: ack.message_id, seq: ack.seq, time: ack.time, id: me.id, name: me.name, msg: out.text, ...out.target };
      const { conv } = s.ingest(chat, 'ack');
      if (conv?.hasGap) this.scheduleGapCheck(conv);
      if (conv && conv.key === s.activeKey) this.scheduleMarkRead();
      s.changed();
    } catch (e) {
      if (!s.outbox.has(out.txnid)) return;
      if (e instanceof ServerError && [429, 500, 503].includes(e.errno) && out.retries < MAX_SEND_RETRIES) {
        out.retries++; // nothing stored (or, for 503, completed by the resend with the same txnid)
        clearTimeout(this.sendRetryTimer);
        this.sendRetryTimer = setTimeout(() => this.flushOutbox(), SEND_RETRY_MS * Math.min(out.retries, 4));
      } else if (e instanceof ServerError) {
        out.status = 'failed';
        out.error = describeError(e, 'send');
        s.notify(out.error);
        if (out.kind === 'group' && (e.errno === 403 || e.errno === 404)) this.refreshGroupsSoon(); // left elsewhere
      }
      // ConnectionLost / RequestTimeout: stays pending, resent after the re-login.
      s.changed();
    } finally {
      out.inFlight = false;
    }
  }

  discardFailed(txnid) {
    this.store.outbox.delete(txnid);
    this.store.changed();
  }

  // ── user actions ──

  async register(name, password) {
    const s = this.store;
    if (!name) return s.notify('Enter a name to register');
    if (codePoints(name) > LIMITS.name || hasControlChars(name)) return s.notify(`A name has 1 to ${LIMITS.name} characters, without control characters`);
    if (!password) return s.notify('Enter a password');
    if (password.length > LIMITS.password) return s.notify('That password is too long');
    s.authBusy = true;
    s.notify('Registering…', 'info');
    try {
      await this.whenOpen();
      const r = await this.client.request(MSG.REG, { name, password });
      await this.loginWith({ id: r.id, password }, name);
      if (this.ready) s.notify(`Welcome, ${name}! Your id is ${r.id}.`, 'info');
    } catch (e) {
      s.notify(describeError(e, 'register'));
    } finally {
      s.authBusy = false;
      s.changed();
    }
  }

  async login(nameOrId, password) {
    const s = this.store;
    if (!nameOrId) return s.notify('Enter your name or id');
    if (!password) return s.notify('Enter your password');
    s.authBusy = true;
    s.notify('Logging in…', 'info');
    try {
      await this.whenOpen();
      const id = parseId(nameOrId);
      if (id !== null && isSafeInt(id)) {
        try {
          await this.loginWith({ id, password }, nameOrId);
        } catch (e) {
          // A name made of digits: try it as a name too.
          if (!(e instanceof ServerError && e.errno === 1)) throw e;
          await this.loginWith({ name: nameOrId, password }, nameOrId);
        }
      } else {
        await this.loginWith({ name: nameOrId, password }, nameOrId);
      }
      if (s.notice?.text === 'Logging in…') s.notify(null);
    } catch (e) {
      s.notify(describeError(e, 'login'));
    } finally {
      s.authBusy = false;
      s.changed();
    }
  }

  async loginWith(fields) {
    const ack = await this.loginRequest({ ...fields });
    this.credentials = { id: ack.id, password: fields.password };
    this.attempt = 0;
    this.afterLogin(ack, false);
  }

  async logout() {
    const wasReady = this.ready;
    this.endSession();
    this.store.notify('You have logged out.', 'info');
    if (wasReady) {
      try { await this.client.request(MSG.LOGOUT); } catch { /* the socket may be gone: fine */ }
    }
  }

  async addFriend(idText) {
    const s = this.store;
    const id = parseId(idText);
    if (id === null) return s.notify('Friend id must be a number');
    if (id === s.myId) return s.notify('You can’t add yourself as a friend');
    try {
      const r = await this.client.request(MSG.ADD_FRIEND, { friendid: id });
      const f = r.friend && isSafeInt(r.friend.id) ? r.friend : { id, name: `User ${id}` };
      s.rememberUser(f);
      const conv = s.ensureConv('user', f.id);
      conv.isFriend = true;
      this.sync(conv);
      s.notify(`${conv.name} is now your friend.`, 'info');
      return true;
    } catch (e) {
      s.notify(describeError(e, 'addFriend'));
      if (e instanceof ServerError && e.errno === 409) this.refreshFriends();
      return false;
    }
  }

  async deleteFriend(idText) {
    const s = this.store;
    const id = parseId(idText);
    if (id === null) return s.notify('Friend id must be a number');
    try {
      await this.client.request(MSG.DEL_FRIEND, { friendid: id });
      const conv = s.convs.get(convKey('user', id));
      const name = conv?.name ?? s.users.get(id)?.name ?? `User ${id}`;
      if (conv) s.removeConv(conv.key);
      s.notify(`${name} is no longer your friend.`, 'info');
      return true;
    } catch (e) {
      s.notify(describeError(e, 'deleteFriend'));
      return false;
    }
  }

  async createGroup(name, desc) {
    const s = this.store;
    if (!name) return s.notify('Enter a group name');
    if (codePoints(name) > LIMITS.name || hasControlChars(name)) return s.notify(`A group name has 1 to ${LIMITS.name} characters, without control characters`);
    if (codePoints(desc) > LIMITS.groupdesc) return s.notify(`A group description has at most ${LIMITS.groupdesc} characters`);
    try {
      const r = await this.client.request(MSG.CREATE_GROUP, { groupname: name, groupdesc: desc });
      const conv = s.applyGroup(r.group);
      if (!conv) return s.notify('The server did not return the new group');
      this.sync(conv);
      this.open(conv.key);
      s.notify(`Group “${conv.name}” created: its id is ${conv.id}.`, 'info');
      return true;
    } catch (e) {
      s.notify(describeError(e, 'createGroup'));
      return false;
    }
  }

  async joinGroup(idText) {
    const s = this.store;
    const id = parseId(idText);
    if (id === null) return s.notify('Group id must be a number');
    try {
      const r = await this.client.request(MSG.ADD_GROUP, { groupid: id });
      const conv = s.applyGroup(r.group && isSafeInt(r.group.id) ? r.group : { id });
      this.sync(conv);
      this.open(conv.key);
      s.notify(`You joined “${conv.name}”.`, 'info');
      return true;
    } catch (e) {
      s.notify(describeError(e, 'joinGroup'));
      if (e instanceof ServerError && e.errno === 409) this.refreshGroups();
      return false;
    }
  }

  async quitGroup() {
    const s = this.store;
    const conv = s.active();
    if (!conv || conv.kind !== 'group') return;
    try {
      await this.client.request(MSG.QUIT_GROUP, { groupid: conv.id });
      s.removeConv(conv.key);
      s.notify(`You left “${conv.name}”.`, 'info');
    } catch (e) {
      s.notify(describeError(e, 'quitGroup'));
    }
  }

  async toggleMembers() {
    const s = this.store;
    const conv = s.active();
    if (!conv || conv.kind !== 'group') return;
    if (s.members && s.members.groupId === conv.id) {
      s.members = null;
      s.changed();
      return;
    }
    s.members = { groupId: conv.id, users: conv.members.map((m) => ({ ...m })), loading: true };
    s.changed();
    try {
      const r = await this.client.request(MSG.GROUP_MEMBERS, { groupid: conv.id });
      const users = (Array.isArray(r.users) ? r.users : []).filter((u) => isSafeInt(u?.id));
      conv.members = users.map((u) => ({ ...u }));
      for (const u of users) s.rememberUser(u);
      if (s.members && s.members.groupId === conv.id) s.members = { groupId: conv.id, users, loading: false };
    } catch (e) {
      if (s.members) s.members.loading = false;
      s.notify(describeError(e, 'members'));
    }
    s.changed();
  }

  closeMembers() {
    this.store.members = null;
    this.store.changed();
  }

  open(key) {
    const s = this.store;
    const conv = s.convs.get(key);
    if (!conv) return;
    if (s.activeKey !== key) {
      s.activeKey = key;
      s.members = null;
      s.atBottom = true;
    }
    s.changed();
    if (!conv.loaded) this.loadNewest(conv);
    else this.markRead(true);
  }

  close() {
    this.store.activeKey = null;
    this.store.members = null;
    this.store.changed();
  }
}

// ───────────────────────────── 6. View ─────────────────────────────

const $ = (id) => document.getElementById(id);

class View {
  constructor(store, app) {
    this.store = store;
    this.app = app;
    this.scheduled = false;
    this.renderedKey = null;     // conversation whose messages the log shows
    this.renderedWindow = null;  // …and the windowStart it was rendered with
    this.noticeTimer = 0;
    this.el = {
      connStatus: $('conn-status'), notice: $('notice'), noticeDismiss: $('notice-dismiss'), status: $('status'),
      authView: $('auth-view'), chatView: $('chat-view'), authName: $('auth-name'), authPassword: $('auth-password'),
      loginButton: $('login-button'), registerButton: $('register-button'),
      meAvatar: $('me-avatar'), meName: $('me-name'), meId: $('me-id'), meNode: $('me-node'),
      convList: $('conv-list'), convEmpty: $('conv-empty'),
      placeholder: $('conv-placeholder'), pane: $('conv-pane'), convAvatar: $('conv-avatar'),
      convName: $('conv-name'), convSub: $('conv-sub'), groupActions: $('group-actions'),
      membersButton: $('members-button'), log: $('log'), jump: $('jump-button'),
      members: $('members-panel'), membersTitle: $('members-title'), membersList: $('members-list'),
      message: $('message'),
    };
    store.subscribe(() => this.schedule());
  }

  /** Coalesces changes into one render per frame (or per 50 ms in a hidden tab). */
  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => { this.scheduled = false; this.render(); };
    if (document.hidden) setTimeout(run, 50);
    else requestAnimationFrame(run);
  }

  render() {
    const s = this.store;
    this.renderStatus();
    const signedIn = Boolean(s.session);
    this.el.authView.hidden = signedIn;
    this.el.chatView.hidden = !signedIn;
    if (!signedIn) {
      this.renderedKey = null;
      document.title = 'clusterchat';
      this.el.loginButton.toggleAttribute('aria-busy', s.authBusy);
      this.el.registerButton.toggleAttribute('aria-busy', s.authBusy);
      return;
    }
    this.renderProfile();
    const unread = [...s.convs.values()].reduce((n, c) => n + c.unread(s.myId), 0);
    document.title = unread ? `(${unread}) clusterchat` : 'clusterchat';
    this.renderConvList();
    this.renderConversation();
    this.renderMembers();
  }

  renderStatus() {
    const s = this.store;
    const conn = { connecting: 'Connecting…', reconnecting: 'Reconnecting…', online: '', unavailable: '' }[s.conn] ?? '';
    this.el.connStatus.textContent = conn;
    this.el.connStatus.hidden = !conn;
    const n = s.notice;
    this.el.notice.textContent = n?.text ?? '';
    this.el.notice.hidden = !n;
    this.el.notice.dataset.kind = n?.kind ?? '';
    this.el.noticeDismiss.hidden = !n;
    this.el.status.classList.toggle('status-visible', Boolean(conn || n));
    this.el.status.dataset.kind = conn ? 'conn' : n?.kind ?? '';
    // Info fades after a while; errors stay until replaced or dismissed.
    clearTimeout(this.noticeTimer);
    if (n && n.kind === 'info' && !/…$/.test(n.text)) {
      const left = 6000 - (Date.now() - n.at);
      this.noticeTimer = setTimeout(() => { if (s.notice === n) s.notify(null); }, Math.max(0, left));
    }
  }

  renderProfile() {
    const me = this.store.session;
    paintAvatar(this.el.meAvatar, me.name, me.id);
    this.el.meName.textContent = me.name;
    this.el.meId.textContent = String(me.id);
    this.el.meNode.textContent = me.node || '—';
    this.el.meNode.parentElement.dataset.conn = this.store.conn;
  }

  renderConvList() {
    const s = this.store;
    const convs = s.sortedConvs();
    this.el.convEmpty.hidden = convs.length > 0;
    reconcile(this.el.convList, convs, {
      key: (c) => c.key,
      create: (c) => {
        const btn = h('button', { type: 'button', class: 'conv-btn', onclick: () => { this.app.open(c.key); this.focusComposerOnWide(); } });
        return h('li', { class: 'conv-item' }, btn);
      },
      update: (li, c) => this.updateConvItem(li, c),
    });
  }

  updateConvItem(li, c) {
    const s = this.store;
    const myId = s.myId;
    const unread = c.unread(myId);
    const online = c.kind === 'user' && s.stateOf(c.id) === 'online';
    const pending = s.pendingFor(c.key);
    const last = pending.length ? { id: myId, msg: pending[pending.length - 1].text, time: pending[pending.length - 1].timeIso } : c.newest;
    const parts = [c.kind === 'group' ? `${c.name} (group)` : c.name];
    if (c.kind === 'user') parts.push(online ? 'online' : 'offline');
    if (unread) parts.push(`${unread} unread`);
    const label = parts.join(', ');
    li.setAttribute('aria-label', label);
    li.dataset.kind = c.kind;
    li.dataset.id = String(c.id);
    li.dataset.unread = String(unread);
    li.classList.toggle('active', c.key === s.activeKey);
    li.classList.toggle('has-unread', unread > 0);
    const btn = li.firstElementChild;
    btn.setAttribute('aria-label', label);
    if (c.key === s.activeKey) btn.setAttribute('aria-current', 'true');
    else btn.removeAttribute('aria-current');

    const avatar = h('span', { class: 'avatar', 'aria-hidden': 'true' });
    paintAvatar(avatar, c.name, c.id, c.kind);
    if (c.kind === 'user') avatar.append(h('span', { class: `presence ${online ? 'online' : 'offline'}` }));
    let preview;
    if (last) {
      const who = last.id === myId ? 'You: ' : c.kind === 'group' ? `${last.name ?? ''}: ` : '';
      preview = who + last.msg.replace(/\s+/g, ' ');
    } else if (c.kind === 'group') {
      preview = c.desc || `${c.members.length || 'No'} member${c.members.length === 1 ? '' : 's'}`;
    } else {
      preview = c.id === myId ? 'Notes to yourself' : online ? 'Online' : 'Offline';
    }
    btn.replaceChildren(
      avatar,
      h('span', { class: 'conv-main' },
        h('span', { class: 'conv-top' },
          h('span', { class: 'conv-name' }, c.name),
          last ? h('time', { class: 'conv-time', datetime: last.time }, listTime(last.time)) : null),
        h('span', { class: 'conv-bottom' },
          h('span', { class: 'conv-preview' }, preview),
          unread ? h('span', { class: 'badge', 'data-testid': 'unread-count' }, unread > 999 ? '999+' : String(unread)) : null)),
    );
  }

  focusComposerOnWide() {
    if (window.matchMedia('(min-width: 761px)').matches) setTimeout(() => this.el.message.focus(), 0);
  }

  renderConversation() {
    const s = this.store;
    const conv = s.active();
    this.el.chatView.classList.toggle('show-conversation', Boolean(conv));
    this.el.placeholder.hidden = Boolean(conv);
    this.el.pane.hidden = !conv;
    if (!conv) {
      this.renderedKey = null;
      this.el.log.replaceChildren();
      return;
    }
    paintAvatar(this.el.convAvatar, conv.name, conv.id, conv.kind);
    if (conv.kind === 'user') {
      const online = s.stateOf(conv.id) === 'online';
      this.el.convAvatar.append(h('span', { class: `presence ${online ? 'online' : 'offline'}` }));
    }
    this.el.convName.textContent = conv.name;
    this.el.convSub.replaceChildren(...this.subtitle(conv));
    this.el.groupActions.hidden = conv.kind !== 'group';
    this.el.membersButton.setAttribute('aria-expanded', String(Boolean(s.members)));
    this.renderLog(conv);
  }

  subtitle(conv) {
    const s = this.store;
    if (conv.kind === 'group') {
      const online = conv.members.filter((m) => m.id === s.myId || s.stateOf(m.id) === 'online').length;
      const bits = [h('span', { 'data-testid': 'conversation-id' }, `Group id ${conv.id}`)];
      if (conv.members.length) bits.push(` · ${conv.members.length} member${conv.members.length === 1 ? '' : 's'}, ${online} online`);
      if (conv.desc) bits.push(' · ', h('span', { class: 'conv-desc' }, conv.desc));
      return bits;
    }
    if (conv.id === s.myId) return [h('span', { 'data-testid': 'conversation-id' }, `id ${conv.id}`), ' · notes to yourself'];
    const online = s.stateOf(conv.id) === 'online';
    return [
      h('span', { class: `state ${online ? 'online' : 'offline'}` }, online ? 'online' : 'offline'),
      ' · ', h('span', { 'data-testid': 'conversation-id' }, `id ${conv.id}`),
      conv.isFriend ? '' : ' · not a friend',
    ];
  }

  /** Messages (keyed, so scroll and selection survive) plus this conversation's pending sends. */
  renderLog(conv) {
    const s = this.store;
    const log = this.el.log;
    const switched = this.renderedKey !== conv.key;
    this.renderedKey = conv.key;
    if (switched) log.replaceChildren();

    // Remember what is on screen, to keep it there when older messages come in above it.
    const stick = switched || s.atBottom;
    let anchor = null;
    if (!stick) {
      for (const child of log.children) {
        if (child.offsetTop + child.offsetHeight > log.scrollTop) {
          anchor = { el: child, offset: child.offsetTop - log.scrollTop };
          break;
        }
      }
    }

    const myId = s.myId;
    const items = [];
    if (!conv.loaded) items.push({ key: 'top', type: 'top', text: conv.loading ? 'Loading messages…' : '' });
    else if (conv.moreBefore) items.push({ key: 'top', type: 'top', text: conv.loadingOlder ? 'Loading earlier messages…' : 'Scroll up for earlier messages', more: true });
    else items.push({ key: 'top', type: 'top', text: conv.kind === 'group' ? `This is the beginning of “${conv.name}”.` : `This is the beginning of your conversation with ${conv.name}.` });

    let prevDay = null;
    let prev = null;
    const pushMessage = (m, key, extra) => {
      const d = new Date(m.time);
      const dk = Number.isNaN(d.getTime()) ? '' : localDayKey(d);
      if (dk && dk !== prevDay) {
        items.push({ key: `d:${dk}`, type: 'day', text: dayLabel(d) });
        prevDay = dk;
        prev = null;
      }
      const cont = prev && prev.id === m.id && d - new Date(prev.time) < 5 * 60_000;
      items.push({ key, type: 'msg', m, mine: m.id === myId, cont, ...extra });
      prev = m;
    };
    for (const m of conv.visible()) pushMessage(m, `m:${m.message_id}`, {});
    for (const out of s.pendingFor(conv.key)) {
      const m = { id: myId, name: s.session.name, msg: out.text, time: out.timeIso };
      pushMessage(m, `p:${out.txnid}`, { out });
    }
    if (conv.loaded && items.length === 1) items.push({ key: 'empty', type: 'empty', text: 'No messages yet. Say hello!' });

    reconcile(log, items, {
      key: (it) => it.key,
      create: (it) => this.createLogItem(it, conv),
      update: (el, it) => this.updateLogItem(el, it, conv),
    });

    if (stick) log.scrollTop = log.scrollHeight;
    else if (anchor && anchor.el.isConnected) log.scrollTop = anchor.el.offsetTop - anchor.offset;
    this.renderedWindow = conv.loaded ? conv.windowStart : null;
    this.afterScroll(conv);
  }

  createLogItem(it) {
    if (it.type === 'day') return h('div', { class: 'day' }, h('span', {}, it.text));
    if (it.type === 'top' || it.type === 'empty') return h('div', { class: `log-note log-${it.type}` });
    const m = it.m;
    const d = new Date(m.time);
    const valid = !Number.isNaN(d.getTime());
    return h('div', { class: 'msg', dataset: { senderId: String(m.id), ...(m.message_id ? { messageId: String(m.message_id), seq: String(m.seq) } : {}) } },
      h('span', { class: 'avatar avatar-small', 'aria-hidden': 'true', style: `--hue:${hueOf(m.id)}` }, initials(m.name)),
      h('div', { class: 'bubble' },
        h('div', { class: 'sender' }, m.name ?? `User ${m.id}`),
        h('div', { class: 'text' }, richText(m.msg)),
        h('div', { class: 'meta' },
          h('time', { datetime: m.time, title: valid ? fullFormat.format(d) : '' }, valid ? timeFormat.format(d) : ''),
          h('span', { class: 'tick' }))));
  }

  updateLogItem(el, it, conv) {
    if (it.type === 'top' || it.type === 'empty') {
      el.textContent = it.text;
      el.classList.toggle('log-more', Boolean(it.more));
      return;
    }
    if (it.type !== 'msg') return;
    el.classList.toggle('mine', it.mine);
    el.classList.toggle('theirs', !it.mine);
    el.classList.toggle('cont', Boolean(it.cont));
    el.classList.toggle('in-group', conv.kind === 'group');
    const out = it.out;
    el.classList.toggle('pending', out?.status === 'pending');
    el.classList.toggle('failed', out?.status === 'failed');
    el.dataset.state = out ? out.status : 'sent';
    const tick = el.querySelector('.tick');
    tick.classList.toggle('sending', out?.status === 'pending');
    if (!out) {
      tick.textContent = it.mine ? '✓' : '';
      tick.title = it.mine ? 'Sent' : '';
    } else if (out.status === 'pending') {
      tick.textContent = '';
      tick.title = 'Sending…';
      tick.setAttribute('aria-label', 'sending');
    } else {
      tick.replaceChildren(
        h('span', { class: 'failed-text' }, `Not sent: ${out.error ?? 'error'}`), ' ',
        h('button', { type: 'button', class: 'link-btn', onclick: () => this.app.discardFailed(out.txnid) }, 'Remove'));
      tick.title = '';
    }
  }

  /** After any scroll or render: at-bottom flag, jump button, older-page trigger, READ. */
  afterScroll(conv = this.store.active()) {
    const s = this.store;
    const log = this.el.log;
    // A scroll event can run after new state arrived but before it was rendered: wait for it.
    if (!conv || this.scheduled || this.renderedKey !== conv.key) return;
    const distance = log.scrollHeight - log.scrollTop - log.clientHeight;
    const atBottom = distance < 48;
    const wasAtBottom = s.atBottom;
    s.atBottom = atBottom;
    this.el.jump.hidden = atBottom || distance < 200;
    if (atBottom && !wasAtBottom) this.app.scheduleMarkRead();
    if (atBottom) this.app.scheduleMarkRead();
    // Near the top (or nothing to scroll yet): fetch the previous page.
    if (conv.loaded && conv.moreBefore && !conv.loadingOlder && log.scrollTop < 120
      && this.renderedWindow === conv.windowStart) this.app.loadOlder(conv);
  }

  renderMembers() {
    const s = this.store;
    const conv = s.active();
    const panel = s.members && conv && conv.kind === 'group' && s.members.groupId === conv.id ? s.members : null;
    this.el.members.hidden = !panel;
    this.el.chatView.classList.toggle('show-members', Boolean(panel));
    if (!panel) return;
    this.el.membersTitle.textContent = `Members of ${conv.name}`;
    const users = [...panel.users].sort((a, b) => (a.role === 'creator' ? -1 : 0) - (b.role === 'creator' ? -1 : 0)
      || (s.stateOf(b.id) === 'online') - (s.stateOf(a.id) === 'online') || String(a.name).localeCompare(String(b.name)));
    const items = users.length ? users : [{ id: 'none', placeholder: true }];
    reconcile(this.el.membersList, items, {
      key: (u) => String(u.id),
      create: () => h('tr', { class: 'member' }),
      update: (tr, u) => {
        if (u.placeholder) {
          tr.replaceChildren(h('td', { colspan: 3, class: 'muted' }, panel.loading ? 'Loading…' : 'No members'));
          return;
        }
        const online = u.id === s.myId || (s.users.get(u.id)?.state ?? u.state) === 'online';
        const avatar = h('span', { class: 'avatar avatar-small', 'aria-hidden': 'true' });
        paintAvatar(avatar, u.name, u.id);
        avatar.append(h('span', { class: `presence ${online ? 'online' : 'offline'}` }));
        tr.dataset.id = String(u.id);
        tr.dataset.role = u.role === 'creator' ? 'creator' : 'normal';
        tr.dataset.state = online ? 'online' : 'offline';
        tr.replaceChildren(
          h('td', {},
            h('div', { class: 'member-who' },
              avatar,
              h('span', { class: 'member-main' },
                h('span', { class: 'member-name' }, u.name, u.id === s.myId ? h('span', { class: 'muted' }, ' (you)') : null),
                h('span', { class: 'member-meta' }, `id ${u.id}`)))),
          h('td', { class: 'member-role' },
            h('span', { class: `role role-${u.role === 'creator' ? 'creator' : 'normal'}` }, u.role === 'creator' ? 'creator' : 'member')),
          h('td', { class: `member-state state ${online ? 'online' : 'offline'}` }, online ? 'online' : 'offline'),
        );
      },
    });
  }
}

// ───────────────────────────── 7. Wiring ─────────────────────────────

function wire(app, view, store) {
  const el = view.el;
  const authForm = $('auth-form');
  const credentials = () => [el.authName.value.trim(), el.authPassword.value];
  authForm.addEventListener('submit', (e) => {
    e.preventDefault();
    app.login(...credentials());
  });
  el.registerButton.addEventListener('click', () => app.register(...credentials()));

  $('logout-button').addEventListener('click', () => {
    el.authPassword.value = '';
    app.logout();
  });
  el.noticeDismiss.addEventListener('click', () => store.notify(null));

  const friendId = $('friend-id');
  $('friend-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (await app.addFriend(friendId.value)) friendId.value = '';
  });
  $('delete-friend-button').addEventListener('click', async () => {
    if (await app.deleteFriend(friendId.value)) friendId.value = '';
  });

  const groupName = $('group-name');
  const groupDesc = $('group-desc');
  $('create-group-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (await app.createGroup(groupName.value.trim(), groupDesc.value.trim())) {
      groupName.value = '';
      groupDesc.value = '';
    }
  });
  const groupId = $('group-id');
  $('join-group-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (await app.joinGroup(groupId.value)) groupId.value = '';
  });

  $('quit-group-button').addEventListener('click', () => app.quitGroup());
  el.membersButton.addEventListener('click', () => app.toggleMembers());
  $('members-close').addEventListener('click', () => app.closeMembers());
  $('back-button').addEventListener('click', () => app.close());
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (store.members) app.closeMembers();
  });

  // Composer: Enter sends, Shift+Enter (or an IME composition) types a newline.
  const message = el.message;
  const grow = () => {
    message.style.height = 'auto';
    message.style.height = `${Math.min(message.scrollHeight, 180)}px`;
  };
  const submit = () => {
    if (app.send(message.value)) {
      message.value = '';
      grow();
    }
    message.focus();
  };
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  message.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });
  message.addEventListener('input', grow);

  // Log: older pages on reaching the top; READ on reaching the bottom.
  el.log.addEventListener('scroll', () => view.afterScroll(), { passive: true });
  el.jump.addEventListener('click', () => {
    el.log.scrollTo({ top: el.log.scrollHeight, behavior: 'smooth' });
  });
  window.addEventListener('resize', () => view.schedule());
}

const store = new Store();
const client = new ProtocolClient(webSocketUrl());
const app = new ChatApp(store, client);
const view = new View(store, app);
wire(app, view, store);
view.render();
app.start();

// For debugging and end-to-end tests (e.g. `__clusterchat.client.drop()` to simulate a drop).
window.__clusterchat = Object.freeze({ store, client, app, view });
