// The lab's custom k6 metrics and the tag values test.js breaks them down by. Every sample also carries the VU's tags `server` (rust|python) and
// `scenario` (sessions|chat|echo|hold); see scenarios.js. Time trends are marked isTime so that
// `-o experimental-prometheus-rw` exports them in seconds (k6_wslab_rtt_p99 and so on).
import { Counter, Trend } from 'k6/metrics';

// Time from sending a broadcast or echo until this same connection received it back. Measured on
// k6's monotonic clock, from the send() call to the message handler running, so it includes
// k6's own event-loop delay (see wslab_event_loop_lag).
export const rtt = new Trend('wslab_rtt', true);

// For every broadcast received from any connection of this k6 run (own ones included): time from
// its sender's send() call to this receiver's handler. Both ends read the same monotonic clock
// (the k6 process's), carried in the message's `ref`, so sub-millisecond values mean something.
export const deliveryLatency = new Trend('wslab_delivery_latency', true);

// Server messages received, tagged `type` (welcome, broadcast, echo, error, other).
export const messagesReceived = new Counter('wslab_messages_received');

// Things that went wrong, tagged `code`: the server's error code (invalid_json, invalid_message,
// unknown_type, binary_unsupported) or a client-side one (see k6/README.md), including
// k6_dropped_welcome: k6 1.1.0 itself lost a welcome the server sent (protocol.js).
export const errors = new Counter('wslab_errors');

// Every `code` wslab_errors can carry that test.js breaks down per server in the end-of-test
// summary (close_NNNN is open-ended: the usual ones are listed, summary.js reports the rest as
// unlisted). Keep in step with protocol.js and k6/README.md.
export const ERROR_CODES = [
  // sent by the server (PROTOCOL.md "Errors"); `other` for an unknown one
  'binary_unsupported', 'invalid_json', 'invalid_message', 'unknown_type', 'other',
  // seen by the client
  'connect_failed', 'socket_error', 'welcome_timeout', 'welcome_missing', 'bad_welcome',
  'reply_missing', 'foreign_echo', 'unexpected_message', 'close_timeout',
  'close_1002', 'close_1006', 'close_1007', 'close_1008', 'close_1009', 'close_1011',
  // k6 1.1.0's own defect, not the server's (protocol.js)
  'k6_dropped_welcome',
];

// Connections that did not end with a close handshake this client started, tagged `reason`:
// error (the socket reported an error, e.g. 1006 or 1008), server_closed (the server closed
// first, e.g. 1001 at shutdown) or close_timeout.
export const uncleanCloses = new Counter('wslab_unclean_closes');
export const UNCLEAN_REASONS = ['error', 'server_closed', 'close_timeout'];

// 1 per server that setup() found not answering on /healthz, tagged `server`: the run stops
// there, and summary.js names that server as the cause instead of the thresholds no load met.
export const unreachable = new Counter('wslab_server_unreachable');

// How late a VU's timers fire: a VU whose event loop is busy can't read replies in time, so a
// high value means the numbers measure k6, not the server.
export const eventLoopLag = new Trend('wslab_event_loop_lag', true);
