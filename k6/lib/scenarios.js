// What one VU iteration does in each scenario. No sleep() anywhere: everything is driven by
// socket events and timers, and every connection is bounded by the timeouts in protocol.js.
// Everything runs on k6/experimental/websockets (many sockets per VU for the fleets); `sessions`
// can run on k6/ws instead with SESSIONS_MODULE=ws (see protocol.js for the trade-off).
import exec from 'k6/execution';
import { clearInterval, setInterval, setTimeout } from 'k6/timers';

import { LAG_PROBE_MS, REPLY_TIMEOUT_MS, withRoom } from './config.js';
import { eventLoopLag } from './metrics.js';
import { Client, experimental, legacy, now } from './protocol.js';
import { executorFor } from './shapes.js';

// Samples how late this VU's timers fire until the returned stop function is called.
function startLagProbe() {
  let last = now();
  const id = setInterval(() => {
    const t = now();
    eventLoopLag.add(Math.max(0, t - last - LAG_PROBE_MS));
    last = t;
  }, LAG_PROBE_MS);
  return () => clearInterval(id);
}

// sessions: one iteration is one short session. Connect, wait for the welcome, send M broadcasts
// spaced by SESSIONS_SPACING_MS, wait until all M came back, close. A VU holds one session at a
// time on either module (k6/ws's ws.connect blocks until the session ends).
function sessions(server, url, cfg, nonce) {
  const room = cfg.room;
  // eslint-disable-next-line no-new
  new Client({
    transport: cfg.module === 'ws' ? legacy : experimental,
    url: withRoom(url, room),
    server,
    scenario: 'sessions',
    room,
    nonce,
    key: `${exec.vu.idInTest}-${exec.vu.iterationInInstance}`,
    onWelcome: (c) => {
      if (cfg.messages === 0) {
        c.close();
        return;
      }
      let sent = 0;
      const next = () => {
        c.send('broadcast');
        sent += 1;
        if (sent < cfg.messages) c.after(cfg.spacingMs, next);
        else c.closeWhenDrained(REPLY_TIMEOUT_MS);
      };
      next();
    },
  });
}

// This VU's share of a fleet of `connections` sockets. Socket g (0..N-1) opens at g/connectRate
// seconds; VU k of V owns g = k, k+V, k+2V, ... so the whole fleet connects at connectRate.
function fleetSlots(cfg) {
  const vus = Math.ceil(cfg.connections / cfg.socketsPerVU);
  const k = exec.scenario.iterationInTest % vus;
  const slots = [];
  for (let j = 0; j < cfg.socketsPerVU; j += 1) {
    const g = j * vus + k;
    if (g >= cfg.connections) break;
    slots.push({ g, delayMs: (g / cfg.connectRate) * 1000 });
  }
  return slots;
}

// Runs a fleet: opens each slot's socket on schedule, calls behaviour.welcome(client, stopAt) once
// it is welcomed (behaviour.own(client, stopAt) after each own message back), and at the stop
// time (connect phase + duration from now) calls behaviour.stop(client).
function fleet(server, url, cfg, nonce, roomOf, behaviour) {
  const { connectMs } = executorFor(behaviour.name, cfg);
  const stopAtMs = connectMs + cfg.duration * 1000;
  const t0 = now();
  const slots = fleetSlots(cfg);
  let live = slots.length;
  if (live === 0) return;
  const stopLag = startLagProbe();
  for (const slot of slots) {
    setTimeout(() => {
      const room = roomOf(slot.g);
      const client = new Client({
        url: withRoom(url, room),
        server,
        scenario: behaviour.name,
        room: room || 'lobby',
        nonce,
        cfg,
        key: `${exec.vu.idInTest}-${slot.g}`,
        onWelcome: (c) => behaviour.welcome(c, t0 + stopAtMs),
        onOwn: behaviour.own ? (c) => behaviour.own(c, t0 + stopAtMs) : undefined,
        onEnd: () => {
          live -= 1;
          if (live === 0) stopLag();
        },
      });
      client.after(Math.max(0, t0 + stopAtMs - now()), () => behaviour.stop(client));
    }, slot.delayMs);
  }
}

// chat: CHAT_CONNECTIONS sockets over CHAT_ROOMS rooms; each broadcasts every CHAT_INTERVAL_MS
// (first one at a random offset so the fleet doesn't send in lockstep) until the stop time.
const chat = {
  name: 'chat',
  welcome(c, stopAt) {
    const tick = () => {
      if (now() >= stopAt || c.draining) return;
      c.send('broadcast');
      c.after(c.opts.cfg.intervalMs, tick);
    };
    c.after(Math.random() * c.opts.cfg.intervalMs, tick);
  },
  stop(c) {
    c.closeWhenDrained(REPLY_TIMEOUT_MS);
  },
};

// echo: closed loop on ECHO_CONNECTIONS sockets: send an echo, wait for it, (think,) repeat.
const echo = {
  name: 'echo',
  welcome(c) {
    c.send('echo');
  },
  own(c, stopAt) {
    if (now() >= stopAt) {
      c.closeWhenDrained(REPLY_TIMEOUT_MS);
    } else if (c.opts.cfg.thinkMs > 0) {
      c.after(c.opts.cfg.thinkMs, () => c.send('echo'));
    } else {
      c.send('echo');
    }
  },
  stop(c) {
    c.closeWhenDrained(REPLY_TIMEOUT_MS);
  },
};

// hold: HOLD_CONNECTIONS idle sockets opened at HOLD_RATE per second, held HOLD_DURATION after
// the last one opened; then each proves it is still alive with one echo (HOLD_VERIFY) and closes.
const hold = {
  name: 'hold',
  welcome() {},
  stop(c) {
    if (c.opts.cfg.verify && c.send('echo')) c.closeWhenDrained(REPLY_TIMEOUT_MS);
    else c.close();
  },
};

const FLEETS = { chat, echo, hold };

export function runScenario(scenario, server, url, cfg, nonce) {
  if (scenario === 'sessions') {
    sessions(server, url, cfg, nonce);
    return;
  }
  const behaviour = FLEETS[scenario];
  // echo and hold get rooms of their own, so other scenarios' broadcasts never reach them.
  const roomOf = scenario === 'chat' ? (g) => `chat-${g % cfg.rooms}` : () => scenario;
  fleet(server, url, cfg, nonce, roomOf, behaviour);
}
