// Builds a whole k6 test (options, setup, default function, handleSummary) for a set of servers. The scripts in
// k6/scripts/ are thin wrappers around makeTest().
//
// Scenario names are `<scenario>_<server>` (e.g. `chat_rust`). k6 tags every sample with the
// scenario's name; each iteration overrides that tag with the bare scenario (`chat`) and sets
// `server` (`rust`), so the two servers' samples differ only in `server`.
import http from 'k6/http';
import exec from 'k6/execution';

import {
  PARALLEL,
  SMOKE,
  URLS,
  WINDOW_GAP_S,
  envNum,
  healthzUrl,
  notAnswering,
  scenarioConfig,
  selectedScenarios,
  serverOrder,
} from './config.js';
import { ERROR_CODES, UNCLEAN_REASONS, unreachable } from './metrics.js';
import { runScenario } from './scenarios.js';
import { executorFor } from './shapes.js';
import { makeHandleSummary } from './summary.js';


// SLOs. Percentiles and check rates only, never averages. Each can be moved from the env.
// SMOKE=1 runs check function, not speed, often on a busy CI host next to both servers, so their
// latency bounds are loose (second numbers); the checks and count thresholds stay as strict.
const SLO = {
  checksRate: envNum('SLO_CHECKS_RATE', 0.99),
  rttP95: envNum('SLO_RTT_P95_MS', [100, 1000]),
  rttP99: envNum('SLO_RTT_P99_MS', [250, 2000]),
  deliveryP95: envNum('SLO_DELIVERY_P95_MS', [200, 1000]),
  deliveryP99: envNum('SLO_DELIVERY_P99_MS', [500, 2000]),
  connectP95: envNum('SLO_CONNECT_P95_MS', [1000, 3000]),
  loopLagP99: envNum('SLO_LOOP_LAG_P99_MS', [100, 1000]),
};

function addThresholds(t, scenario, server, cfg) {
  const tag = `{server:${server},scenario:${scenario}}`;
  // At least 99% of the welcome / own-messages-back / clean-close checks pass.
  t[`checks${tag}`] = [`rate>=${SLO.checksRate}`];
  // The run exchanged messages at all: a scenario that silently did nothing fails.
  t[`wslab_messages_received${tag}`] = ['count>0'];
  // Opening a connection (TCP + upgrade) stays well under a second for 95% of them.
  t[`ws_connecting${tag}`] = [`p(95)<${SLO.connectP95}`];
  // Seeing your own broadcast/echo back: interactive for 95%, tolerable for 99%.
  if (scenario !== 'hold' || cfg.verify) {
    t[`wslab_rtt${tag}`] = [`p(95)<${SLO.rttP95}`, `p(99)<${SLO.rttP99}`];
  }
  if (scenario === 'chat') {
    // Fan-out: a broadcast reaches the room's members quickly.
    t[`wslab_delivery_latency${tag}`] = [`p(95)<${SLO.deliveryP95}`, `p(99)<${SLO.deliveryP99}`];
  }
  if (scenario === 'sessions') {
    // k6 started every session it was asked to. If not, k6 (too few VUs) was the bottleneck,
    // and the run says so by failing.
    t[`dropped_iterations{scenario:${scenario}_${server}}`] = ['count<1'];
  } else {
    // k6's own event loop kept up. If not, the latencies above measure k6, not the server.
    t[`wslab_event_loop_lag${tag}`] = [`p(99)<${SLO.loopLagP99}`];
  }
}

// Submetrics without threshold expressions: they bound nothing, they only make k6 keep per-server
// counts by error code and unclean-close reason for summary.js (k6 1.1.0's end-of-test data has
// per-tag numbers only for submetrics named here) and --summary-export.
function addBreakdowns(t, server) {
  t[`wslab_errors{server:${server}}`] = [];
  for (const code of ERROR_CODES) t[`wslab_errors{server:${server},code:${code}}`] = [];
  for (const reason of UNCLEAN_REASONS) t[`wslab_unclean_closes{server:${server},reason:${reason}}`] = [];
  t[`wslab_messages_received{server:${server},type:welcome}`] = [];
  t[`wslab_server_unreachable{server:${server}}`] = [];
}

// serverKeys: the servers this script may target, e.g. ['rust'] or ['rust', 'python'].
export function makeTest(serverKeys) {
  const servers = serverKeys.length > 1 ? serverOrder(serverKeys) : serverKeys.slice();
  const names = selectedScenarios();
  const scenarios = {};
  const thresholds = {};
  const planned = {};
  for (const name of names) {
    const cfg = scenarioConfig(name);
    planned[name] = Object.assign({ cfg }, executorFor(name, cfg));
  }
  const add = (name, server, start) => {
    scenarios[`${name}_${server}`] = Object.assign({}, planned[name].executor, {
      startTime: `${Math.round(start * 1000)}ms`,
      tags: { server },
      exec: 'default',
    });
    addThresholds(thresholds, name, server, planned[name].cfg);
  };
  if (PARALLEL) {
    for (const name of names) for (const server of servers) add(name, server, 0);
  } else if (SMOKE) {
    // SMOKE checks function, not speed: a server's scenarios share one window, the servers still
    // take turns. Each window is reserved for its worst case (every timeout running out), so one
    // window per scenario and server kept `SCENARIO=all` idle for most of 1 min 52 s; this way it
    // is two windows.
    const window = Math.max(...names.map((name) => planned[name].seconds));
    servers.forEach((server, i) => {
      for (const name of names) add(name, server, i * (window + WINDOW_GAP_S));
    });
  } else {
    // One window per scenario and server, in turn: nothing else runs while one is measured.
    let start = 0;
    for (const name of names) {
      for (const server of servers) {
        add(name, server, start);
        start += planned[name].seconds + WINDOW_GAP_S;
      }
    }
  }

  for (const server of servers) addBreakdowns(thresholds, server);

  const options = {
    scenarios,
    thresholds,
    summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
    // setup() only probes /healthz.
    setupTimeout: '30s',
  };

  function setup() {
    const problems = [];
    for (const server of servers) {
      const url = healthzUrl(URLS[server]);
      const res = http.get(url, { timeout: '5s', tags: { server } });
      if (res.status !== 200 || res.body !== 'ok') {
        const got = res.error ? res.error : `HTTP ${res.status}`;
        problems.push(notAnswering(server, got));
        // For handleSummary (summary.js): which server the run stopped for, so its verdict names
        // it last instead of the thresholds that no load could meet.
        unreachable.add(1, { server });
      }
    }
    if (problems.length > 0) exec.test.abort(problems.join('; '));
    // A per-run nonce in every message ref: see protocol.js.
    return { nonce: Math.random().toString(36).slice(2, 10) };
  }

  const configs = {};
  for (const name of names) configs[name] = scenarioConfig(name);

  function run(data) {
    const name = exec.scenario.name;
    const cut = name.lastIndexOf('_');
    const scenario = name.slice(0, cut);
    const server = name.slice(cut + 1);
    exec.vu.metrics.tags.scenario = scenario;
    exec.vu.metrics.tags.server = server;
    runScenario(scenario, server, URLS[server], configs[scenario], data.nonce);
  }

  return { options, setup, run, handleSummary: makeHandleSummary(servers) };
}
