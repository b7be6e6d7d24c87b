//! One WebSocket connection: its own task, reading frames and writing its outbound queue.
//!
//! Twin: python-ws/python_ws/connection.py.
//!
//! [`Ending`] is the one place that decides how a session ended, which close frame answers it
//! and which `ws_closed_conns_errors_total` reason (if any) it counts.
//!
//! Rocket runs an upgrade's I/O handler inside the task that owns the HTTP request, so a session
//! run there keeps the whole request alive (about 28 KB per connection; bench/README.md, "Design
//! figures"). The handler here spawns the session as a detached task and returns at once;
//! shutdown reaches the detached task through its outbox (`Hub::shutdown`), not through Rocket's
//! request. The session runs on tokio-tungstenite 0.28 rather than rocket_ws's own stream
//! (tungstenite 0.21, whose read buffers are fixed and larger) so that [`ws_config`] can size the
//! read buffer at 4 KiB.
//!
//! Beneath tungstenite the socket has three I/O layers (io_layer.rs): `WriteBatch` (coalesces a
//! batch of frames into one socket write, keeps at most one pong pending) over `SentCounter`
//! (counts `ws_messages_sent_total` as frames reach the socket) over `CodelessClose` (answers a
//! code-less close with 1000).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rocket::data::{IoHandler, IoStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::codeless_close::CodelessClose;
use crate::hub::{self, Kill, Next, Outbox, Room};
use crate::io_layer::Layer;
use crate::log_debug;
use crate::metrics::CloseReason;
use crate::protocol::{self, Kind};
use crate::sent_counter::SentCounter;
use crate::server::{Server, Slot};
use crate::write_batch::{WriteBatch, BATCH_BYTES};

type Ws = WebSocketStream<Layer<WriteBatch, Layer<SentCounter, Layer<CodelessClose, IoStream>>>>;

/// Most queued messages handed to `WriteBatch` before one flush (which is then one socket write
/// when the socket has room). A batch also ends at `BATCH_BYTES`.
const WRITE_BATCH: u64 = 64;
/// The bound on tungstenite's own write buffer. `WriteBatch` takes every frame as it is written,
/// so that buffer only ever holds the frame being written; the bound must fit the largest frame
/// the server sends (an echo of 4,096 characters, each at most 6 bytes as a JSON escape, plus the
/// other fields: under 26 KiB; `largest_reply_fits_the_write_bound` checks it).
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// How long a client gets to answer our close frame before the TCP connection is dropped.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// How long a close frame may wait behind unread data (slow consumers) before giving up.
const SLOW_CLOSE_SEND: Duration = Duration::from_secs(10);
/// At shutdown, time to send 1001 and then to hear back, so the process exits within ~5 s.
const SHUTDOWN_SEND: Duration = Duration::from_secs(1);
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(1500);

/// tungstenite's buffers for one connection. 4 KiB of eagerly allocated read buffer (the default
/// is 128 KiB) keeps idle connections small. A write buffer of 0 hands each frame straight to
/// `WriteBatch`, which does the coalescing and, unlike tungstenite's buffer, frees its memory once
/// written out and keeps one pong pending at most; tungstenite's buffer is bounded all the same.
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// The I/O handler Rocket calls once the 101 has gone out.
pub struct Session {
    pub(crate) server: Arc<Server>,
    pub(crate) room: Box<str>,
    pub(crate) slot: Slot,
}

#[rocket::async_trait]
impl IoHandler for Session {
    async fn io(self: Pin<Box<Self>>, io: IoStream) -> io::Result<()> {
        let session = *Pin::into_inner(self);
        // Detach: returning now lets Rocket drop the request (see the module docs).
        tokio::spawn(session.run(io));
        Ok(())
    }
}

/// How a session ended, before its closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client sent a close frame.
    ClientClosed,
    /// EOF or reset without a close handshake.
    Abnormal,
    /// An invalid frame; the close code to answer with.
    Protocol(CloseCode),
    /// A close frame with a code that must not be sent; tungstenite has queued its 1002 answer.
    InvalidClose,
    TooLarge,
    SlowConsumer,
    PingTimeout,
    SendFailed,
    Shutdown,
}

impl From<Kill> for Ending {
    fn from(k: Kill) -> Self {
        match k {
            Kill::SlowConsumer => Ending::SlowConsumer,
            Kill::Shutdown => Ending::Shutdown,
        }
    }
}

impl Ending {
    fn reason(self) -> Option<CloseReason> {
        match self {
            Ending::ClientClosed | Ending::Shutdown => None,
            Ending::Abnormal => Some(CloseReason::Abnormal),
            Ending::Protocol(_) | Ending::InvalidClose => Some(CloseReason::Protocol),
            Ending::TooLarge => Some(CloseReason::TooLarge),
            Ending::SlowConsumer => Some(CloseReason::SlowConsumer),
            Ending::PingTimeout => Some(CloseReason::PingTimeout),
            Ending::SendFailed => Some(CloseReason::SendFailed),
        }
    }
}

fn classify(e: &WsError) -> Ending {
    match e {
        WsError::Capacity(_) => Ending::TooLarge,
        WsError::Utf8(_) => Ending::Protocol(CloseCode::Invalid),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Abnormal,
        WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => Ending::Abnormal,
        _ => Ending::Protocol(CloseCode::Protocol),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Keepalive state: when the next ping is due, and when an unanswered ping was sent.
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    last_ping: Instant,
    awaiting_since: Option<Instant>,
}

impl Keepalive {
    fn deadline(&self) -> Instant {
        match self.awaiting_since {
            Some(sent) => sent + self.timeout,
            None => self.last_ping + self.interval,
        }
    }
}

impl Session {
    async fn run(mut self, io: IoStream) {
        let server = &self.server;
        let metrics = &server.metrics;
        let mut ws = WebSocketStream::from_raw_socket(
            // Batches frames into few socket writes (write_batch); counts ws_messages_sent_total
            // as frames reach the socket (sent_counter).
            Layer::new(
                WriteBatch::new(),
                Layer::new(
                    SentCounter::new(metrics.sent.clone()),
                    Layer::new(CodelessClose::new(), io),
                ),
            ),
            Role::Server,
            Some(ws_config(server.config.max_message_bytes)),
        )
        .await;
        metrics.accepted.inc();
        // Decrements on drop, so the gauge comes back down however this task ends (even by an
        // unwinding panic).
        let _open = OpenGauge::inc(&metrics.connections);

        let id = server.hub.next_conn_id();
        let outbox = Arc::new(Outbox::new());
        let joined = server.hub.join(&self.room, id, &outbox);
        // The room keeps its own name; don't hold a second copy for the whole session.
        self.room = Box::default();
        let ending = match joined {
            Some(room) => {
                let mut conn = Conn {
                    server,
                    id,
                    room: &room,
                    outbox: &outbox,
                };
                let ending = conn.serve(&mut ws).await;
                // Leave before the closing handshake, so no fan-out targets us meanwhile.
                server.hub.leave(&room, id);
                ending
            }
            None => Ending::Shutdown,
        };
        drop(outbox);
        log_debug!("conn {id}: ending {ending:?}");

        // Counted when the server decides, not after the closing handshake: an evicted slow
        // reader may take seconds to take its close frame, and the eviction happened now.
        if let Some(reason) = ending.reason() {
            metrics.closed_abnormally(reason);
        }
        // The rare closing paths are boxed so their buffers and timers don't enlarge every
        // connection's task.
        // Messages still in `WriteBatch`'s buffer go out ahead of the close frame (and count as
        // their bytes reach the socket), or never, if the connection is dropped first.
        Box::pin(close(&mut ws, ending)).await;
        // The TCP connection ends here, then the gauge and the slot follow.
        drop(ws);
        drop(_open);
        drop(self.slot);
        crate::reclaim::connection_ended();
    }
}

/// `ws_connections` +1 now and −1 on drop.
struct OpenGauge<'a>(&'a prometheus::IntGauge);

impl<'a> OpenGauge<'a> {
    fn inc(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The closing handshake each ending calls for; true if our close frame (and so everything
/// queued before it) was written. Every wait is bounded.
///
/// `ws_messages_sent_total` doesn't depend on the result: `SentCounter` counts each message as the
/// socket takes the last byte of its frame, on whichever path that happens.
async fn close(ws: &mut Ws, ending: Ending) -> bool {
    match ending {
        Ending::ClientClosed | Ending::InvalidClose => {
            // tungstenite has queued the echo of the client's close frame (or its 1002 answer);
            // reading on hands it to `WriteBatch` and ends the stream once the handshake is
            // complete. tungstenite doesn't flush on that last step, so flush `WriteBatch` here.
            let done = timeout(CLOSE_DRAIN, async {
                drain(ws).await && ws.get_mut().flush().await.is_ok()
            });
            matches!(done.await, Ok(true))
        }
        Ending::Shutdown => {
            close_and_drain(
                ws,
                CloseCode::Away,
                "server shutting down",
                SHUTDOWN_SEND,
                SHUTDOWN_DRAIN,
            )
            .await
        }
        Ending::SlowConsumer => {
            close_and_drain(
                ws,
                CloseCode::Policy,
                "slow consumer",
                SLOW_CLOSE_SEND,
                CLOSE_DRAIN,
            )
            .await
        }
        Ending::TooLarge => close_after_read_error(ws, CloseCode::Size, "message too large").await,
        Ending::Protocol(code) => close_after_read_error(ws, code, "protocol error").await,
        // The peer is gone or unresponsive, or the socket failed: just drop it.
        Ending::Abnormal | Ending::PingTimeout | Ending::SendFailed => false,
    }
}

/// Reads until the stream ends; true if it ended with the close handshake complete.
async fn drain(ws: &mut Ws) -> bool {
    while let Some(frame) = ws.next().await {
        if frame.is_err() {
            return false;
        }
    }
    true
}

fn close_message(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// Sends our close frame, then reads until the client's answer ends the stream.
async fn close_and_drain(
    ws: &mut Ws,
    code: CloseCode,
    reason: &'static str,
    send_within: Duration,
    drain_within: Duration,
) -> bool {
    let sent = matches!(
        timeout(send_within, ws.send(close_message(code, reason))).await,
        Ok(Ok(()))
    );
    if sent {
        let _ = timeout(drain_within, drain(ws)).await;
    }
    sent
}

/// After a read error tungstenite yields no more frames, and the rest of the offending frame may
/// still be unread. Send the close frame, end our side of TCP, and discard input until the
/// client closes: dropping a socket with unread input would send a reset instead of a FIN, and
/// the client could lose our close frame.
async fn close_after_read_error(ws: &mut Ws, code: CloseCode, reason: &'static str) -> bool {
    let sent = matches!(
        timeout(SHUTDOWN_SEND, ws.send(close_message(code, reason))).await,
        Ok(Ok(()))
    );
    if sent {
        let io = ws.get_mut();
        let _ = timeout(CLOSE_DRAIN, async {
            let _ = io.shutdown().await;
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
    sent
}

/// How a write step ended, when it didn't end the session.
enum WriteDone {
    Written,
    /// The keepalive timer fired while the write waited on the socket.
    PingDue,
}

/// The keepalive timer fired: drop a peer whose ping went unanswered for the timeout, or send the
/// next ping. A ping may wait behind unread data, so sending it is bounded by the timeout too.
async fn keepalive_tick(
    ws: &mut Ws,
    outbox: &Outbox,
    keepalive: &mut Keepalive,
    ping_timer: &mut Pin<&mut tokio::time::Sleep>,
) -> Result<(), Ending> {
    let now = Instant::now();
    if keepalive.awaiting_since.is_some() {
        if now >= keepalive.deadline() {
            return Err(Ending::PingTimeout);
        }
    } else {
        keepalive.last_ping = now;
        keepalive.awaiting_since = Some(now);
        tokio::select! {
            r = ws.send(Message::Ping(Default::default())) => if r.is_err() {
                return Err(Ending::SendFailed);
            },
            k = outbox.wait_killed() => return Err(k.into()),
            _ = tokio::time::sleep(keepalive.timeout) => return Err(Ending::PingTimeout),
        }
    }
    ping_timer.as_mut().reset(keepalive.deadline().into());
    Ok(())
}

/// The running part of a session.
struct Conn<'a> {
    server: &'a Server,
    id: u64,
    room: &'a Arc<Room>,
    outbox: &'a Arc<Outbox>,
}

impl Conn<'_> {
    async fn serve(&mut self, ws: &mut Ws) -> Ending {
        let cfg = &self.server.config;
        let pings = cfg.ping_interval_secs > 0;
        let mut keepalive = Keepalive {
            interval: Duration::from_secs(cfg.ping_interval_secs),
            timeout: Duration::from_secs(cfg.ping_timeout_secs),
            last_ping: Instant::now(),
            awaiting_since: None,
        };
        let ping_timer = sleep_until(keepalive.deadline().into());
        tokio::pin!(ping_timer);
        let outbox = self.outbox;

        loop {
            tokio::select! {
                next = outbox.next() => match next {
                    Next::Kill(k) => return k.into(),
                    Next::Message(m) => match self.write(ws, m, &mut ping_timer).await {
                        Err(ending) => return ending,
                        Ok(WriteDone::PingDue) => {
                            if let Err(ending) = keepalive_tick(ws, outbox, &mut keepalive, &mut ping_timer).await {
                                return ending;
                            }
                        }
                        Ok(WriteDone::Written) => {}
                    },
                },
                frame = ws.next() => match frame {
                    None => return Ending::Abnormal,
                    Some(Err(e)) => {
                        log_debug!("conn {}: read error: {e}", self.id);
                        return classify(&e);
                    }
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                    Some(Ok(Message::Binary(_))) => {
                        let payload = protocol::error_payload(&protocol::binary_unsupported());
                        self.server.metrics.received_invalid.inc();
                        self.push_own(payload);
                    }
                    // tungstenite queues the pong itself and hands it to `WriteBatch` on the next
                    // read, where a newer pong replaces one not yet written (PROTOCOL.md §3).
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Pong(_))) => {
                        if keepalive.awaiting_since.take().is_some() && pings {
                            ping_timer.as_mut().reset(keepalive.deadline().into());
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        // WriteBatch → SentCounter → CodelessClose.
                        let io = &mut ws.get_mut().inner.inner.job;
                        // The code as the client sent it (tungstenite's frame has 1002 in place
                        // of a code it refused), or None without a code.
                        let sent = io.client_close_code().flatten();
                        match sent {
                            // Our reply must carry 1000, not tungstenite's empty echo.
                            None if frame.is_none() => io.answer_empty_close_with_1000(),
                            Some(code) if !protocol::close_code_may_be_sent(code) => {
                                return Ending::InvalidClose;
                            }
                            // A valid code tungstenite refused (1014): echo it after all.
                            Some(code) if frame.as_ref().is_some_and(|f| u16::from(f.code) != code) => {
                                io.answer_refused_close_with(code);
                            }
                            _ => {}
                        }
                        return Ending::ClientClosed;
                    }
                    Some(Ok(Message::Frame(_))) => {}
                },
                _ = &mut ping_timer, if pings => {
                    if let Err(ending) = keepalive_tick(ws, outbox, &mut keepalive, &mut ping_timer).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes: `WriteBatch`
    /// turns the batch into one socket write when the socket has room. The queued messages are
    /// finished frames (a broadcast's is shared by every recipient), so they go straight to
    /// `WriteBatch`; tungstenite only writes its own frames (pong, ping, close), and as
    /// `WriteBatch` takes every frame whole at once, the two never interleave inside a frame. A kill or the keepalive
    /// deadline interrupts a write stuck behind a client that doesn't read; what was handed on
    /// stays in `WriteBatch` and goes out with the next flush or close.
    ///
    /// Nothing is counted here: `ws_messages_sent_total` moves in `SentCounter` as each message's
    /// frame reaches the socket, because an interrupted write's leftovers are flushed later by a
    /// read, a ping or the close frame (or dropped with the connection), not by this function.
    async fn write(
        &mut self,
        ws: &mut Ws,
        first: Bytes,
        ping_timer: &mut Pin<&mut tokio::time::Sleep>,
    ) -> Result<WriteDone, Ending> {
        let outbox = self.outbox;
        // Hand the batch on before anything can interrupt: `select!` polls its branches in a
        // random order and drops the ones it did not choose, so a deadline already past could
        // win before the write was ever polled, and a message taken off the queue would be lost
        // without a trace (seen as seq gaps with keepalive every second).
        let batch = &mut ws.get_mut().job;
        batch.push_frame(&first);
        let mut fed = 1;
        while fed < WRITE_BATCH && batch.pending() < BATCH_BYTES {
            match outbox.try_pop() {
                Some(m) => {
                    batch.push_frame(&m);
                    fed += 1;
                }
                None => break,
            }
        }
        tokio::select! {
            r = ws.flush() => match r {
                Ok(()) => Ok(WriteDone::Written),
                Err(e) => {
                    log_debug!("conn {}: write error: {e}", self.id);
                    Err(Ending::SendFailed)
                }
            },
            k = outbox.wait_killed() => Err(k.into()),
            _ = ping_timer.as_mut(), if self.server.config.ping_interval_secs > 0 => {
                Ok(WriteDone::PingDue)
            }
        }
    }

    /// Queues a reply for this connection alone. If our own queue is full, that is the same
    /// slow-consumer eviction a fan-out would do; the main loop sees the kill next.
    fn push_own(&self, payload: String) {
        self.outbox
            .push(hub::text_frame(&payload), self.server.hub.send_queue());
    }

    /// Parse, validate, serialise (the handling timer), then hand off: to our own queue for an
    /// echo or an error, to the room's fan-out (the broadcast timer) for a broadcast.
    fn on_text(&self, text: &str) {
        let metrics = &self.server.metrics;
        let start = Instant::now();
        let value = match protocol::parse(text) {
            Ok(v) => v,
            Err(e) => return self.reply_error(start, &e),
        };
        let msg = match protocol::validate(&value) {
            Ok(m) => m,
            Err(e) => return self.reply_error(start, &e),
        };
        let server_ts = now_ms();
        let from = protocol::ConnId {
            node: self.server.hub.node(),
            n: self.id,
        };
        let head = protocol::reply_head(&msg, from);
        match msg.kind {
            Kind::Echo => {
                // An echo has no room sequence: seq is always 0.
                let payload = protocol::finish_reply(head, 0, server_ts);
                metrics.handling.observe(start.elapsed().as_secs_f64());
                metrics.received_ok.inc();
                self.push_own(payload);
            }
            Kind::Broadcast if self.server.broker.is_some() => {
                // With a broker, Redis numbers the broadcast and every node's members (ours
                // too) get it from the subscription; this connection never waits for it.
                let parts = protocol::split_reply(head, server_ts);
                metrics.handling.observe(start.elapsed().as_secs_f64());
                metrics.received_ok.inc();
                if let Some(broker) = &self.server.broker {
                    broker.publish(self.room.name(), parts, msg.reference, self.outbox);
                }
            }
            Kind::Broadcast => {
                let head_secs = start.elapsed().as_secs_f64();
                let times = self.server.hub.broadcast(self.room, |seq| {
                    protocol::finish_reply(head, seq, server_ts)
                });
                metrics.handling.observe(head_secs + times.finish_secs);
                metrics.broadcast.observe(times.fan_out_secs);
                metrics.received_ok.inc();
            }
        }
    }

    fn reply_error(&self, start: Instant, err: &protocol::ProtocolError) {
        let payload = protocol::error_payload(err);
        let metrics = &self.server.metrics;
        metrics.handling.observe(start.elapsed().as_secs_f64());
        metrics.received_invalid.inc();
        self.push_own(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only abnormal endings count a reason; a client's close and the server's shutdown don't.
    #[test]
    fn each_ending_counts_its_own_reason() {
        let cases = [
            (Ending::ClientClosed, None),
            (Ending::Shutdown, None),
            (Ending::Abnormal, Some(CloseReason::Abnormal)),
            (
                Ending::Protocol(CloseCode::Protocol),
                Some(CloseReason::Protocol),
            ),
            (
                Ending::Protocol(CloseCode::Invalid),
                Some(CloseReason::Protocol),
            ),
            (Ending::TooLarge, Some(CloseReason::TooLarge)),
            (Ending::SlowConsumer, Some(CloseReason::SlowConsumer)),
            (Ending::PingTimeout, Some(CloseReason::PingTimeout)),
            (Ending::SendFailed, Some(CloseReason::SendFailed)),
        ];
        for (ending, reason) in cases {
            assert_eq!(ending.reason(), reason, "{ending:?}");
        }
        assert_eq!(Ending::from(Kill::SlowConsumer), Ending::SlowConsumer);
        assert_eq!(Ending::from(Kill::Shutdown), Ending::Shutdown);
    }

    #[test]
    fn read_errors_map_to_endings() {
        use tokio_tungstenite::tungstenite::error::CapacityError;
        let too_big = WsError::Capacity(CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        });
        assert_eq!(classify(&too_big), Ending::TooLarge);
        let eof = WsError::Io(io::ErrorKind::UnexpectedEof.into());
        assert_eq!(classify(&eof), Ending::Abnormal);
        let reset = WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(classify(&reset), Ending::Abnormal);
        let bad_utf8 = WsError::Utf8("invalid utf-8".into());
        assert_eq!(classify(&bad_utf8), Ending::Protocol(CloseCode::Invalid));
        let rsv = WsError::Protocol(ProtocolError::NonZeroReservedBits);
        assert_eq!(classify(&rsv), Ending::Protocol(CloseCode::Protocol));
    }

    /// tungstenite refuses a frame larger than its write bound, so the largest reply the
    /// protocol allows (every string at its longest, every character a 6-byte JSON escape) must
    /// fit in `MAX_WRITE_BUFFER` with its frame header.
    #[test]
    fn largest_reply_fits_the_write_bound() {
        let esc = |n: usize| "\\u0001".repeat(n);
        let text = format!(
            r#"{{"type":"echo","user":"{}","text":"{}","ref":"{}","sent_at":9007199254740991}}"#,
            esc(32),
            esc(4096),
            esc(64)
        );
        let value = protocol::parse(&text).unwrap();
        let msg = protocol::validate(&value).unwrap();
        let reply =
            protocol::finish_reply(protocol::reply_head(&msg, u64::MAX), u64::MAX, u64::MAX);
        assert!(
            reply.len() > 6 * 4096,
            "every character escaped: {}",
            reply.len()
        );
        assert!(
            reply.len() + 14 <= MAX_WRITE_BUFFER,
            "{} bytes",
            reply.len()
        );
    }

    /// The keepalive timer: next ping one interval after the last; once a ping is out, the
    /// deadline is the timeout after it, not the next interval.
    #[test]
    fn keepalive_deadline_follows_the_outstanding_ping() {
        let t0 = Instant::now();
        let mut k = Keepalive {
            interval: Duration::from_secs(20),
            timeout: Duration::from_secs(5),
            last_ping: t0,
            awaiting_since: None,
        };
        assert_eq!(k.deadline(), t0 + Duration::from_secs(20));
        let sent = t0 + Duration::from_secs(20);
        k.last_ping = sent;
        k.awaiting_since = Some(sent);
        assert_eq!(k.deadline(), sent + Duration::from_secs(5));
        k.awaiting_since = None; // the pong came
        assert_eq!(k.deadline(), sent + Duration::from_secs(20));
    }
}
