// Configuration from the environment (`k6 run -e NAME=value` or the process environment).
//
// Every knob has a documented default (k6/README.md lists them all). An empty variable counts as
// unset. A value that does not parse throws at init time, naming the variable, so a typo fails the
// run before any load is generated instead of silently using a default.
//
// SMOKE=1 swaps every default for a tiny one (a few seconds, a handful of connections) so the test
// suite can run every scenario quickly; an explicitly set variable still wins.

export const SCENARIOS = ['sessions', 'chat', 'echo', 'hold'];

// server key -> the `server` field its welcome carries (PROTOCOL.md section 1).
export const SERVER_NAMES = { rust: 'rust-ws', python: 'python-ws' };

function raw(name) {
  const v = __ENV[name];
  return v === undefined || v === null || v === '' ? undefined : String(v);
}

export function envStr(name, def) {
  const v = raw(name);
  return v === undefined ? def : v;
}

export function envBool(name, def) {
  const v = raw(name);
  if (v === undefined) return def;
  const s = v.toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(s)) return true;
  if (['0', 'false', 'no', 'off'].includes(s)) return false;
  throw new Error(`${name}=${JSON.stringify(v)} is not a boolean (use 1 or 0)`);
}

// A number >= min; `def` may be a pair [normal, smoke].
export function envNum(name, def, min = 0) {
  const v = raw(name);
  const d = Array.isArray(def) ? (SMOKE ? def[1] : def[0]) : def;
  if (v === undefined) return d;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) {
    throw new Error(`${name}=${JSON.stringify(v)} is not a number >= ${min}`);
  }
  return n;
}

export function envChoice(name, def, choices) {
  const v = envStr(name, def);
  if (!choices.includes(v)) {
    throw new Error(`${name}=${JSON.stringify(v)}: expected one of ${choices.join(', ')}`);
  }
  return v;
}

export function envInt(name, def, min = 0) {
  const n = envNum(name, def, min);
  if (!Number.isInteger(n)) throw new Error(`${name}=${JSON.stringify(n)} is not an integer`);
  return n;
}

export const SMOKE = envBool('SMOKE', false);

export const URLS = {
  rust: envStr('RUST_WS_URL', 'ws://localhost:8000/ws'),
  python: envStr('PYTHON_WS_URL', 'ws://localhost:8001/ws'),
};

// PARALLEL=1: every selected scenario x server starts at once. Default: one after another, in
// separate time windows, so the servers never compete for the host's CPU.
export const PARALLEL = envBool('PARALLEL', false);

// Seconds of quiet between consecutive windows (lets the dashboards show idle between runs).
export const WINDOW_GAP_S = envNum('WINDOW_GAP', [10, 1]);

// SCENARIO: one name, a comma-separated list, or `all`.
export function selectedScenarios() {
  const v = envStr('SCENARIO', 'sessions');
  const names = v === 'all' ? SCENARIOS.slice() : v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const n of names) {
    if (!SCENARIOS.includes(n)) {
      throw new Error(`SCENARIO=${JSON.stringify(v)}: unknown scenario ${JSON.stringify(n)}; ` +
        `expected one of ${SCENARIOS.join(', ')} or all`);
    }
  }
  if (names.length === 0) throw new Error('SCENARIO is empty');
  return names;
}

// both.js order of the consecutive windows.
export function serverOrder(allowed) {
  const v = envStr('ORDER', allowed.join(','));
  const names = v.split(',').map((s) => s.trim()).filter(Boolean);
  const sorted = names.slice().sort().join(',');
  if (sorted !== allowed.slice().sort().join(',')) {
    throw new Error(`ORDER=${JSON.stringify(v)} must list exactly ${allowed.join(' and ')}`);
  }
  return names;
}

// Message text length in characters (protocol: 1-4096).
export const MESSAGE_CHARS = Math.min(envInt('MESSAGE_CHARS', 32, 1), 4096);

// Per-connection bounds, in milliseconds. No socket outlives these: a VU can't hang.
export const WELCOME_TIMEOUT_MS = envInt('WELCOME_TIMEOUT_MS', [10000, 3000], 1);
export const REPLY_TIMEOUT_MS = envInt('REPLY_TIMEOUT_MS', [10000, 3000], 1);
export const CLOSE_TIMEOUT_MS = envInt('CLOSE_TIMEOUT_MS', [5000, 2000], 1);

// Sockets on k6/experimental/websockets (chat/echo/hold, and sessions by default): one still
// without a welcome after this long
// sends an echo probe, to tell a welcome k6 1.1.0 dropped from one the server never sent (see
// protocol.js). Short, because messages arrive in order: a late welcome still comes before the
// probe's reply, so probing early never misattributes; it only costs one echo. Not done when
// >= WELCOME_TIMEOUT_MS.
export const WELCOME_PROBE_MS = envInt('WELCOME_PROBE_MS', 1000, 1);

// How often each long-lived VU samples its own event-loop lag.
export const LAG_PROBE_MS = envInt('LAG_PROBE_MS', 200, 10);

// scenario parameters; see k6/README.md for what each one means.
export function scenarioConfig(name) {
  switch (name) {
    case 'sessions':
      return {
        shape: envStr('SESSIONS_SHAPE', 'ramp'),
        // Which k6 WebSocket module runs the sessions (protocol.js): `experimental` (default;
        // graceful close, can drop a welcome, which the probe attributes to k6) or `ws` (k6/ws;
        // never drops one, but closes TCP before the server's close frame).
        module: envChoice('SESSIONS_MODULE', 'experimental', ['experimental', 'ws']),
        rate: envNum('SESSIONS_RATE', [50, 10], 0.001), // sessions started per second at peak
        ramp: envNum('SESSIONS_RAMP', [30, 1]), // seconds
        hold: envNum('SESSIONS_HOLD', [60, 2]), // seconds
        messages: envInt('SESSIONS_MESSAGES', 1, 0), // broadcasts per session (M)
        spacingMs: envInt('SESSIONS_SPACING_MS', [100, 50]), // between a session's broadcasts
        room: envStr('SESSIONS_ROOM', 'lobby'),
        // SMOKE: all 20 up front. An arrival-rate executor drops the iteration that finds every
        // allocated VU busy while it initialises another, so on a busy CI host, where a smoke
        // session can take a second or two, 5 VUs at 10/s dropped one now and then
        // (dropped_iterations, k6's sizing, not the server).
        preVUs: envInt('SESSIONS_PRE_VUS', [20, 20], 1),
        maxVUs: envInt('SESSIONS_MAX_VUS', [200, 20], 1),
      };
    case 'chat':
      return {
        connections: envInt('CHAT_CONNECTIONS', [1000, 6], 1),
        rooms: envInt('CHAT_ROOMS', [100, 2], 1),
        intervalMs: envInt('CHAT_INTERVAL_MS', [1000, 250], 1),
        duration: envNum('CHAT_DURATION', [60, 2]), // seconds of chatting once all are connected
        connectRate: envNum('CHAT_CONNECT_RATE', [200, 50], 0.001), // new connections per second
        socketsPerVU: envInt('CHAT_SOCKETS_PER_VU', envInt('SOCKETS_PER_VU', [100, 3], 1), 1),
      };
    case 'echo':
      return {
        connections: envInt('ECHO_CONNECTIONS', [50, 4], 1),
        duration: envNum('ECHO_DURATION', [30, 2]),
        thinkMs: envInt('ECHO_THINK_MS', 0),
        connectRate: envNum('ECHO_CONNECT_RATE', [200, 50], 0.001),
        socketsPerVU: envInt('ECHO_SOCKETS_PER_VU', envInt('SOCKETS_PER_VU', [10, 2], 1), 1),
      };
    case 'hold':
      return {
        connections: envInt('HOLD_CONNECTIONS', [10000, 20], 1),
        connectRate: envNum('HOLD_RATE', [500, 100], 0.001), // new connections per second
        duration: envNum('HOLD_DURATION', [60, 2]), // seconds all are held open
        verify: envBool('HOLD_VERIFY', true), // one echo per connection before closing
        socketsPerVU: envInt('HOLD_SOCKETS_PER_VU', envInt('SOCKETS_PER_VU', [500, 10], 1), 1),
      };
    default:
      throw new Error(`unknown scenario ${name}`);
  }
}

// ws://host:port/ws -> http://host:port/healthz (wss -> https).
export function healthzUrl(wsUrl) {
  const m = /^(wss?):\/\/([^/?#]+)/i.exec(wsUrl);
  if (!m) throw new Error(`${JSON.stringify(wsUrl)} is not a ws:// or wss:// URL`);
  return `${m[1].toLowerCase() === 'wss' ? 'https' : 'http'}://${m[2]}/healthz`;
}

// Adds ?room=NAME (or &room=NAME) to a ws URL.
export function withRoom(wsUrl, room) {
  if (!room) return wsUrl;
  return `${wsUrl}${wsUrl.includes('?') ? '&' : '?'}room=${encodeURIComponent(room)}`;
}

// What to start when a server isn't there (setup() and the end-of-test verdict, summary.js).
const START_HINTS = {
  rust: 'start it with `cargo run --release -p rust-ws` (or `docker compose up -d rust-ws`)',
  python: 'start it with `.venv/bin/python -m python_ws` (or `docker compose up -d python-ws`)',
};
export const URL_VARS = { rust: 'RUST_WS_URL', python: 'PYTHON_WS_URL' };

// "python-ws is not answering at http://…/healthz (PYTHON_WS_URL=…; <got>): start it with …".
export function notAnswering(server, got) {
  const why = got ? `; ${got}` : '';
  return `${SERVER_NAMES[server]} is not answering at ${healthzUrl(URLS[server])} ` +
    `(${URL_VARS[server]}=${URLS[server]}${why}): ${START_HINTS[server]}, ` +
    `or set ${URL_VARS[server]} to where it runs`;
}
