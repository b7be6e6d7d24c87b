// A protocol v1 client (PROTOCOL.md section 3) over either of k6's two WebSocket modules.
//
// One `Client` is one connection. It waits for the welcome, sends broadcasts and echoes, matches
// its own messages coming back, records the wslab_* metrics and the three checks, and always ends:
// every wait has a timeout, and it never calls close() before its handlers have run. The protocol
// logic lives here once; a transport (below) only moves frames and timers for it:
//
// - `experimental` (`k6/experimental/websockets` + `k6/timers`, many sockets per VU on the VU's
//   event loop): every scenario by default. Its close event carries no code in 1.1.0; a close that
//   was not a 1000/1001 (1006, 1008, 1009) raises an `error` event first whose text holds the code
//   ("websocket: close 1008 (policy violation): slow consumer"). close() sends our close frame and
//   keeps reading until the server's comes back: a close is clean when this client started the
//   handshake, no error came, and the server's close frame came back in time.
// - `legacy` (`k6/ws`, one socket per VU iteration, blocking): `sessions` with SESSIONS_MODULE=ws.
//   ws.connect runs our set-up callback, which registers every handler, *before* its read loop
//   starts, so it never loses the welcome (below). But its close() writes our close frame and
//   closes TCP at once, without waiting for the server's: messages the server is still writing
//   (other sessions' broadcasts in the room) hit a reset socket, and the server counts that
//   connection as ws_closed_conns_errors_total{reason="send_failed"}. Measured (k6 1.1.0, 40
//   sessions/s per server, 1 broadcast each, room `lobby`): 37 of ~820 on rust-ws and 126 of ~820
//   on python-ws, against 0 on the experimental module. Its close event carries the code; here a
//   close is clean when this client started it and no error came (close_timeout can't happen).
//
// k6 1.1.0's experimental module can lose a message that arrives right after the 101 (k6/README.md,
// "k6 1.1.0 drops some welcomes"): establishConnection starts the read loop (`go w.loop()`)
// before it queues the `open` task,
// and a message task that runs while readyState != OPEN is dropped unseen (not even counted in
// ws_msgs_received). rust-ws writes its welcome ~0.1 ms after the 101, so under CPU contention
// about 1 connection in 200-1,500 never sees a welcome that is on the wire and in the server's
// ws_messages_sent_total. The upstream fix is k6's: queue `open` before starting the read loop.
// On that module a connection still without a welcome after WELCOME_PROBE_MS sends an echo probe.
// Messages arrive in order on one connection and k6 runs their tasks in order, so an echo reply
// with no welcome before it means the welcome was dropped by k6 (the server writes the welcome
// first on every connection: tests/conformance): it counts wslab_errors{code="k6_dropped_welcome"},
// learns its conn_id from the reply's `from`, and carries on. No `welcome received` check is
// recorded for it (the welcome's content was never seen, so it neither passes nor fails). No reply
// by WELCOME_TIMEOUT_MS stays a failure: `welcome_timeout`.
import { check, group } from 'k6';
import exec from 'k6/execution';
import { WebSocket } from 'k6/experimental/websockets';
import { clearTimeout, setTimeout } from 'k6/timers';
import ws from 'k6/ws';

import {
  CLOSE_TIMEOUT_MS,
  MESSAGE_CHARS,
  SERVER_NAMES,
  WELCOME_PROBE_MS,
  WELCOME_TIMEOUT_MS,
} from './config.js';
import * as metrics from './metrics.js';

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

// Error codes the server may send (PROTOCOL.md "Errors"); anything else is tagged `other`, so the
// `code` tag keeps a closed set of values.
const SERVER_ERROR_CODES = new Set([
  'binary_unsupported', 'invalid_json', 'invalid_message', 'unknown_type',
]);
const MESSAGE_TYPES = new Set(['welcome', 'broadcast', 'echo', 'error']);

const TEXT = 'x'.repeat(MESSAGE_CHARS);

// k6's monotonic clock in milliseconds, sub-microsecond resolution, shared by every VU of this
// k6 process (performance.now() does not exist in k6 1.1.0).
export function now() {
  return exec.instance.currentTestRunDuration;
}

// The run's nonce goes into every `ref`, together with the send time on now()'s clock, so any
// receiver in this k6 process can compute delivery latency, and messages from other senders (a
// second k6, a browser) are told apart instead of producing nonsense latencies.
function parseRef(nonce, ref) {
  if (typeof ref !== 'string') return undefined;
  const parts = ref.split(':');
  if (parts.length !== 3 || parts[0] !== nonce) return undefined;
  const t = Number(parts[1]);
  return Number.isFinite(t) ? t : undefined;
}

// "websocket: close 1008 (policy violation): slow consumer" -> "close_1008".
function errorCode(opened, text) {
  const m = /close (\d{4})/.exec(String(text));
  if (m) return `close_${m[1]}`;
  return opened ? 'socket_error' : 'connect_failed';
}

// The group a check is recorded in: "<server> <scenario>" (e.g. "rust sessions"). k6 keeps a
// pass/fail tally per group and check name in its end-of-test data (and --summary-export's
// root_group), which is how summary.js says which check failed for which server.
export function checkGroup(server, scenario) {
  return `${server} ${scenario}`;
}

// Transports. connect(client, url) creates the socket, calls client.attach(conn) before any
// event, then forwards events: client.onOpen(), client.onMessage(text), client.onError(text),
// client.onClose(). conn: readyState, send(text), close(code), setTimeout(fn, ms) -> cancel().

// k6/experimental/websockets: returns at once; events run on the VU's event loop.
export const experimental = {
  name: 'experimental',
  // k6 1.1.0 defect above: a message before the `open` task can be dropped.
  dropsEarlyMessages: true,
  connect(client, url) {
    const socket = new WebSocket(url);
    client.attach({
      get readyState() { return socket.readyState; },
      send: (text) => socket.send(text),
      close: (code) => socket.close(code),
      setTimeout: (fn, ms) => {
        const id = setTimeout(fn, ms);
        return () => clearTimeout(id);
      },
    });
    socket.onopen = () => client.onOpen();
    socket.onmessage = (e) => client.onMessage(e.data);
    socket.onerror = (e) => client.onError(e.error);
    socket.onclose = () => client.onClose();
  },
};

// k6/ws: blocks until the connection has ended; events run inside ws.connect.
export const legacy = {
  name: 'legacy',
  dropsEarlyMessages: false,
  connect(client, url) {
    let state = CONNECTING;
    const res = ws.connect(url, null, (socket) => {
      state = OPEN;
      client.attach({
        get readyState() { return state; },
        send: (text) => socket.send(text),
        close: (code) => socket.close(code),
        setTimeout: (fn, ms) => {
          // k6/ws has no clearTimeout: a cancelled timer fires into a no-op. Its timers die with
          // the socket. It refuses 0 ms.
          let live = true;
          socket.setTimeout(() => { if (live) fn(); }, Math.max(ms, 0.001));
          return () => { live = false; };
        },
      });
      socket.on('open', () => client.onOpen());
      socket.on('message', (data) => client.onMessage(data));
      socket.on('error', (e) => client.onError(typeof e.error === 'function' ? e.error() : e));
      socket.on('close', () => {
        state = CLOSED;
        client.onClose();
      });
    });
    if (state === CONNECTING) {
      // The dial or the upgrade failed: k6/ws never ran the callback and reports it in res.error.
      client.onError(res && res.error ? res.error : 'connect failed');
      client.onClose();
    }
  },
};

export class Client {
  // opts:
  //   url, server ('rust' | 'python'), scenario, room (expected in the welcome), nonce (from
  //   setup()), key (unique per connection within the VU, goes into refs), transport (`legacy` or
  //   `experimental`, the default), onWelcome(client), onOwn(client, type) after each own message
  //   came back, onEnd(client).
  // With `legacy` the constructor returns once the connection has ended.
  constructor(opts) {
    this.opts = opts;
    this.transport = opts.transport || experimental;
    this.group = checkGroup(opts.server, opts.scenario);
    this.user = `k6-vu${exec.vu.idInTest}`;
    this.conn = null;
    this.connId = null;
    this.opened = false;
    this.welcomed = false;
    this.closing = false; // this client started the close handshake
    this.wantClose = false; // close() was asked for while still connecting
    this.draining = false;
    this.ended = false;
    this.errored = false;
    this.closeTimedOut = false;
    this.welcomeTimedOut = false;
    this.probeRef = null; // the echo probe for a welcome k6 may have dropped (see top)
    this.pending = new Map(); // ref -> send time on now()'s clock
    this.sent = 0;
    this.ownBack = 0;
    this.n = 0;
    this.timers = new Set();
    this.transport.connect(this, opts.url);
  }

  // Called by the transport once the socket exists, before any of its events.
  attach(conn) {
    this.conn = conn;
    this.after(WELCOME_TIMEOUT_MS, () => {
      if (!this.welcomed) {
        this.welcomeTimedOut = true;
        metrics.errors.add(1, { code: 'welcome_timeout' });
        this.close();
      }
    });
    if (this.transport.dropsEarlyMessages && WELCOME_PROBE_MS < WELCOME_TIMEOUT_MS) {
      this.after(WELCOME_PROBE_MS, () => this.probeWelcome());
    }
  }

  // setTimeout owned by this connection: cancelled when it ends, never fires after.
  after(ms, fn) {
    if (this.ended || !this.conn) return;
    const timer = { live: true, cancel: null };
    this.timers.add(timer);
    timer.cancel = this.conn.setTimeout(() => {
      this.timers.delete(timer);
      if (timer.live && !this.ended) fn();
    }, ms);
  }

  // A check in this connection's "<server> <scenario>" group (see checkGroup).
  check(name, ok) {
    return group(this.group, () => check(ok, { [name]: (v) => v === true }));
  }

  get open() {
    return this.conn !== null && this.conn.readyState === OPEN && !this.closing;
  }

  // Sends a `broadcast` or `echo`; returns false if the socket can't send now.
  send(type) {
    if (!this.open || !this.welcomed) return false;
    this.n += 1;
    const t = now();
    const ref = `${this.opts.nonce}:${t.toFixed(3)}:${this.opts.key}.${this.n}`;
    this.pending.set(ref, t);
    this.sent += 1;
    this.conn.send(JSON.stringify({
      type, user: this.user, text: TEXT, ref, sent_at: Date.now(),
    }));
    return true;
  }

  // No welcome yet (experimental transport only): ask the server with an echo whether it serves
  // this connection. Retried until the socket is open; the welcome timeout still bounds it.
  probeWelcome() {
    if (this.welcomed || this.closing || this.probeRef !== null) return;
    if (!this.open) {
      this.after(WELCOME_PROBE_MS, () => this.probeWelcome());
      return;
    }
    this.probeRef = `${this.opts.nonce}:${now().toFixed(3)}:${this.opts.key}.probe`;
    this.conn.send(JSON.stringify({
      type: 'echo', user: this.user, text: TEXT, ref: this.probeRef, sent_at: Date.now(),
    }));
  }

  // Starts the close handshake (once). Until the server's close frame arrives the socket is
  // still read, so nothing is cut short (experimental transport; legacy closes at once).
  close() {
    if (this.closing || this.ended || this.conn === null) return;
    if (this.conn.readyState === CONNECTING) {
      // k6 can't close a socket that is still connecting; do it as soon as it opens.
      this.wantClose = true;
      return;
    }
    this.closing = true;
    this.conn.close(1000);
    this.after(CLOSE_TIMEOUT_MS, () => {
      this.closeTimedOut = true;
      metrics.errors.add(1, { code: 'close_timeout' });
    });
  }

  // Closes once every message sent has come back, or after timeoutMs regardless.
  closeWhenDrained(timeoutMs) {
    if (this.draining || this.closing || this.ended) return;
    this.draining = true;
    if (this.pending.size === 0) {
      this.close();
      return;
    }
    this.after(timeoutMs, () => this.close());
  }

  onOpen() {
    this.opened = true;
    if (this.wantClose) this.close();
  }

  onMessage(data) {
    const t = now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      msg = null;
    }
    const type = msg && MESSAGE_TYPES.has(msg.type) ? msg.type : 'other';
    metrics.messagesReceived.add(1, { type });
    switch (type) {
      case 'welcome':
        this.onWelcomeMessage(msg);
        return;
      case 'broadcast':
      case 'echo': {
        if (type === 'broadcast') {
          const sentAt = parseRef(this.opts.nonce, msg.ref);
          if (sentAt !== undefined) metrics.deliveryLatency.add(t - sentAt);
        }
        if (type === 'echo' && this.probeRef !== null && msg.ref === this.probeRef) {
          this.onProbeReply(msg);
          return;
        }
        const mine = msg.from === this.connId ? this.pending.get(msg.ref) : undefined;
        if (mine === undefined) {
          // Someone else's broadcast is normal; an echo that isn't ours is a protocol violation.
          if (type === 'echo') metrics.errors.add(1, { code: 'foreign_echo' });
          return;
        }
        this.pending.delete(msg.ref);
        this.ownBack += 1;
        metrics.rtt.add(t - mine);
        if (this.draining && this.pending.size === 0) {
          this.close();
        } else if (this.opts.onOwn && !this.draining) {
          this.opts.onOwn(this, type);
        }
        return;
      }
      case 'error':
        metrics.errors.add(1, { code: SERVER_ERROR_CODES.has(msg.code) ? msg.code : 'other' });
        return;
      default:
        metrics.errors.add(1, { code: 'unexpected_message' });
    }
  }

  // The probe came back. If the welcome has not, it was sent ahead of this reply on the same
  // connection and k6 dropped it (see top): count that against k6 and carry on.
  onProbeReply(msg) {
    this.probeRef = null;
    if (this.welcomed) return; // the welcome was only late; the probe was not needed
    metrics.errors.add(1, { code: 'k6_dropped_welcome' });
    this.welcomed = true;
    this.connId = typeof msg.from === 'string' ? msg.from : null;
    this.afterWelcome();
  }

  onWelcomeMessage(msg) {
    if (this.welcomed) {
      metrics.errors.add(1, { code: 'unexpected_message' });
      return;
    }
    this.welcomed = true;
    const w = msg;
    const ok = this.check('welcome received', typeof w.conn_id === 'string' && w.conn_id !== '' &&
      w.server === SERVER_NAMES[this.opts.server] &&
      w.room === this.opts.room &&
      Number.isInteger(w.connections) && w.connections >= 1);
    if (!ok) metrics.errors.add(1, { code: 'bad_welcome' });
    this.connId = msg.conn_id;
    this.afterWelcome();
  }

  afterWelcome() {
    if (this.wantClose) {
      this.close();
    } else if (this.opts.onWelcome) {
      this.opts.onWelcome(this);
    }
  }

  onError(text) {
    this.errored = true;
    metrics.errors.add(1, { code: errorCode(this.opened, text) });
  }

  onClose() {
    if (this.ended) return;
    this.ended = true;
    for (const timer of this.timers) {
      timer.live = false;
      if (timer.cancel) timer.cancel();
    }
    this.timers.clear();

    if (!this.welcomed) {
      this.check('welcome received', false);
      // Closed (by us at the end of its window, or by the server) before any welcome came.
      if (!this.errored && !this.welcomeTimedOut) metrics.errors.add(1, { code: 'welcome_missing' });
    }
    if (this.sent > 0) {
      this.check('own messages back', this.ownBack === this.sent);
      if (this.pending.size > 0) metrics.errors.add(this.pending.size, { code: 'reply_missing' });
    }
    const clean = this.closing && !this.errored && !this.closeTimedOut;
    this.check('clean close', clean);
    if (!clean) {
      let reason = 'close_timeout';
      if (this.errored) reason = 'error';
      else if (!this.closing) reason = 'server_closed';
      metrics.uncleanCloses.add(1, { reason });
    }
    if (this.opts.onEnd) this.opts.onEnd(this);
  }
}
