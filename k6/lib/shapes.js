// Named load shapes: how each scenario's load rises, holds and falls, as k6 executor settings,
// plus how long each one lasts (both.js lays scenarios out in consecutive windows from this).
import { REPLY_TIMEOUT_MS, CLOSE_TIMEOUT_MS, WELCOME_TIMEOUT_MS } from './config.js';

const s = (seconds) => `${Math.max(0, Math.round(seconds * 1000))}ms`;

// Arrival-rate shapes for `sessions`, by SESSIONS_SHAPE. Each returns stages for a
// ramping-arrival-rate executor peaking at `rate` sessions per second.
export const SESSION_SHAPES = {
  // 0 -> rate over `ramp`, hold `hold`, back to 0 over `ramp`.
  ramp: (c) => [
    { target: c.rate, duration: s(c.ramp) },
    { target: c.rate, duration: s(c.hold) },
    { target: 0, duration: s(c.ramp) },
  ],
  // rate from the first second to the last.
  constant: (c) => [
    { target: c.rate, duration: s(0) },
    { target: c.rate, duration: s(c.hold) },
  ],
  // Four equal steps up to rate, each held hold/4: find the knee where latency bends.
  steps: (c) => [1, 2, 3, 4].flatMap((i) => [
    { target: (c.rate * i) / 4, duration: s(c.ramp / 4) },
    { target: (c.rate * i) / 4, duration: s(c.hold / 4) },
  ]),
  // A tenth of rate, a jump to rate within `ramp`, hold, and back: burst absorption.
  spike: (c) => [
    { target: c.rate / 10, duration: s(c.hold / 3) },
    { target: c.rate, duration: s(c.ramp) },
    { target: c.rate, duration: s(c.hold / 3) },
    { target: c.rate / 10, duration: s(c.ramp) },
    { target: c.rate / 10, duration: s(c.hold / 3) },
  ],
};

function stagesSeconds(stages) {
  return stages.reduce((acc, st) => acc + parseInt(st.duration, 10) / 1000, 0);
}

// Executor settings for `name` with config `c`, and `seconds`: the longest the scenario can run,
// graceful stop included.
export function executorFor(name, c) {
  if (name === 'sessions') {
    const shape = SESSION_SHAPES[c.shape];
    if (!shape) {
      throw new Error(`SESSIONS_SHAPE=${JSON.stringify(c.shape)}: expected one of ` +
        Object.keys(SESSION_SHAPES).join(', '));
    }
    const stages = shape(c);
    const startRate = stages[0].duration === '0ms' ? c.rate : 0;
    // A session in flight at the end may finish: it is bounded by these timeouts.
    const grace = (WELCOME_TIMEOUT_MS + c.messages * c.spacingMs + REPLY_TIMEOUT_MS +
      CLOSE_TIMEOUT_MS) / 1000 + 1;
    return {
      executor: {
        executor: 'ramping-arrival-rate',
        startRate,
        timeUnit: '1s',
        preAllocatedVUs: c.preVUs,
        maxVUs: c.maxVUs,
        stages,
        gracefulStop: s(grace),
      },
      seconds: stagesSeconds(stages) + grace,
    };
  }
  // chat, echo, hold: a fixed fleet of long-lived connections, many per VU. Each VU runs one
  // iteration that opens its share of sockets on a global schedule (connectRate per second over
  // the whole fleet), keeps them for `duration` seconds after the last one opened, then closes.
  const vus = Math.ceil(c.connections / c.socketsPerVU);
  const connectS = c.connections / c.connectRate;
  const maxDuration = connectS + c.duration +
    (WELCOME_TIMEOUT_MS + REPLY_TIMEOUT_MS + CLOSE_TIMEOUT_MS) / 1000 + 1;
  const grace = 2;
  return {
    executor: {
      executor: 'per-vu-iterations',
      vus,
      iterations: 1,
      maxDuration: s(maxDuration),
      gracefulStop: s(grace),
    },
    seconds: maxDuration + grace,
    connectMs: connectS * 1000,
  };
}
