// Question: how does rust-ws (Rocket) behave under this scenario's load — latency of your own
// messages, fan-out delivery, connection cost, and does every session end cleanly?
//
//   k6 run k6/scripts/rust.js                         # sessions against ws://localhost:8000/ws
//   k6 run -e SCENARIO=chat k6/scripts/rust.js        # or echo, hold, all, a comma list
//   k6 run -e SMOKE=1 -e SCENARIO=all k6/scripts/rust.js
// Parameters and their defaults: k6/README.md.
import { makeTest } from '../lib/test.js';

const test = makeTest(['rust']);

export const options = test.options;
export const setup = test.setup;
export default test.run;
export const handleSummary = test.handleSummary;
