// Question: given the same scenario, which server does better — rust-ws (Rocket) or python-ws
// (Tornado)? Both run the identical load; every sample is tagged server=rust|python.
//
// By default the two run in consecutive time windows (rust first; ORDER=python,rust swaps), so
// they never compete for the host's CPU. PARALLEL=1 runs them at the same time.
//
//   k6 run -o experimental-prometheus-rw k6/scripts/both.js
//   k6 run -e SCENARIO=chat -e PARALLEL=1 k6/scripts/both.js
// Parameters and their defaults: k6/README.md.
import { makeTest } from '../lib/test.js';

const test = makeTest(['rust', 'python']);

export const options = test.options;
export const setup = test.setup;
export default test.run;
export const handleSummary = test.handleSummary;
