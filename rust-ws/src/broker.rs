//! This node's link to the Redis broker that makes rooms span nodes (PROTOCOL.md §5).
//!
//! Twin: python-ws/python_ws/broker.py.
//!
//! Only built with `WS_BROKER_URL` set; without it nothing here exists and a broadcast is the
//! hub's local fan-out, as before. With it, a connection hands each handled broadcast to
//! [`Broker::publish`], which never waits: it answers `broker_unavailable` at once when the node
//! is down or 4096 publishes are already waiting, and otherwise queues the publish for the one
//! task that talks to Redis. That task owns the whole up/down cycle:
//!
//! - **Two connections.** A `MultiplexedConnection` for the publish script and the heartbeat
//!   `PING`, and a RESP2 `aio::PubSub` for the one `PSUBSCRIBE wslab:room:*`. redis-rs's
//!   `ConnectionManager` would reconnect by itself, but silently: the node could not set
//!   `ws_broker_up` to 0, turn `/readyz` to 503 or answer the publishes it lost, so reconnecting is
//!   done here, with a fresh pair each time.
//! - **Pipelining.** Publishes go out as batches: while one batch is in flight, what the
//!   members hand over queues up, and goes out as the next batch in one pipelined write
//!   (`redis::pipe()`, many `EVALSHA`s). A batch is answered in order, and the next one is only
//!   sent once it is, so Redis runs the publishes in the order they were handled; the rate is
//!   up to 4096 publishes per round trip, not one. (Several futures on clones of the multiplexed
//!   connection would overlap more, but their requests enter its driver in whatever order they
//!   are first polled: tests/broker.rs caught a burst reordered that way.)
//! - **Timeouts.** The connection's response timeout is the 2 s of §5: a publish or a `PING` left
//!   unanswered that long fails, and any failure there takes the node down (a paused Redis keeps
//!   its sockets open, so only the heartbeat notices it while nothing is published).
//! - **Receiving.** `aio::PubSub` forwards messages from its own driver task through an unbounded
//!   channel, and its stream ends when the connection does. The loop below reads it as it comes;
//!   each message is framed once and pushed onto the members' bounded queues, which never waits,
//!   so the channel only holds what arrived since the last poll. A subscriber that falls behind
//!   anyway is cut off by Redis's `client-output-buffer-limit pubsub` and goes through the cycle.
//!
//! Imports go one way: the broker uses the hub (its outboxes and local fan-out); the hub knows
//! nothing of the broker. connection.rs picks one or the other for a broadcast.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use futures_util::FutureExt;
use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisResult};
use tokio::sync::{mpsc, Notify};

use crate::config::BrokerUrl;
use crate::hub::{text_frame, Hub, Outbox};
use crate::metrics::{Metrics, PublishFailure};
use crate::{log_debug, log_info, log_warn, protocol};

/// The publish script of PROTOCOL.md §5, byte for byte (python-ws sends the same text, so one
/// SHA1 serves both kinds).
pub const SCRIPT: &str = "local seq = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('PUBLISH', ARGV[3], ARGV[1] .. seq .. ARGV[2])
return seq
";

pub const SEQ_KEY_PREFIX: &str = "wslab:seq:";
pub const CHANNEL_PREFIX: &str = "wslab:room:";
pub const PATTERN: &str = "wslab:room:*";

/// Publishes waiting for the broker, queued or sent and unanswered (PROTOCOL.md §5).
pub const MAX_PENDING: usize = 4096;
/// A command unanswered this long means the broker is gone.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One handled broadcast on its way to Redis, with what it takes to answer its sender.
pub struct Publish {
    room: Box<str>,
    head: Vec<u8>,
    tail: Vec<u8>,
    reference: Option<Box<str>>,
    outbox: Arc<Outbox>,
    handed: Instant,
}

pub struct Broker {
    url: BrokerUrl,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Connected, script loaded, subscription confirmed: `ws_broker_up` and `/readyz`.
    up: AtomicBool,
    /// Publishes queued or in flight; what [`MAX_PENDING`] bounds.
    pending: AtomicUsize,
    queue: mpsc::Sender<Publish>,
    /// Taken once by [`Broker::run`].
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Publish>>>,
    stop: Notify,
    stopping: AtomicBool,
}

enum Ended {
    Stopped,
    Down(String),
}

impl Broker {
    pub fn new(url: BrokerUrl, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Broker {
        let (queue, receiver) = mpsc::channel(MAX_PENDING);
        Broker {
            url,
            hub,
            metrics,
            up: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Hands a handled broadcast (`HEAD`, `TAIL` of §5) to the publisher, or answers its sender
    /// `broker_unavailable` at once. Never waits.
    pub fn publish(
        &self,
        room: &str,
        (head, tail): (Vec<u8>, Vec<u8>),
        reference: Option<&str>,
        outbox: &Arc<Outbox>,
    ) {
        if !self.is_up() {
            return self.answer_failed(outbox, reference, PublishFailure::Unavailable);
        }
        let reserved = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_PENDING).then_some(n + 1)
            });
        if reserved.is_err() {
            return self.answer_failed(outbox, reference, PublishFailure::Overloaded);
        }
        let p = Publish {
            room: room.into(),
            head,
            tail,
            reference: reference.map(Into::into),
            outbox: outbox.clone(),
            handed: Instant::now(),
        };
        // The channel holds MAX_PENDING and `pending` counts what it holds, so it is never full;
        // it is closed only once the publisher has stopped (shutdown).
        if let Err(e) = self.queue.try_send(p) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            self.resolve(p, Err(PublishFailure::Unavailable));
        }
    }

    fn answer_failed(&self, outbox: &Outbox, reference: Option<&str>, why: PublishFailure) {
        self.metrics.publish_failed(why);
        let payload = protocol::broker_unavailable(reference);
        outbox.push(text_frame(&payload), self.hub.send_queue());
    }

    /// Settles a publish that was counted in `pending`: confirmed, or answered with `why`.
    fn resolve(&self, p: Publish, outcome: Result<(), PublishFailure>) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Ok(()) => {
                self.metrics.broker_published.inc();
                self.metrics
                    .broker_publish_duration
                    .observe(p.handed.elapsed().as_secs_f64());
            }
            Err(why) => self.answer_failed(&p.outbox, p.reference.as_deref(), why),
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.broker_up.set(up as i64);
    }

    /// Ends the publisher: its connections close, and what waits is answered `lost`.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.set_up(false);
        // notify_one keeps a permit if the task is not waiting right now.
        self.stop.notify_one();
    }

    /// A log line's text with the password, if any, shown as `***`. redis-rs's errors don't
    /// carry the URL, but an error echoing a server reply could carry anything.
    fn redact(&self, text: String) -> String {
        match &self.url.password {
            Some(pw) if !pw.is_empty() => text.replace(pw.as_str(), "***"),
            _ => text,
        }
    }

    /// The publisher and subscriber: connects, serves until the broker goes, reconnects with
    /// back-off, for as long as the server runs.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                // Only reachable with a URL config.rs let through and redis-rs refuses.
                log_warn!(
                    "broker {}: cannot use this URL: {}",
                    self.url,
                    self.redact(e.to_string())
                );
                return;
            }
        };
        let mut backoff = BACKOFF_MIN;
        // One warning per transition to down, and one for a broker absent at start-up.
        let mut warned = false;
        while !self.stopping.load(Ordering::Acquire) {
            let connected = {
                let connect = tokio::time::timeout(3 * COMMAND_TIMEOUT, connect(&client)).fuse();
                tokio::pin!(connect);
                loop {
                    tokio::select! {
                        biased;
                        _ = self.stop.notified() => return self.drain(&mut rx),
                        r = &mut connect => break r,
                        Some(p) = rx.recv() => self.resolve(p, Err(PublishFailure::Unavailable)),
                    }
                }
            };
            let (conn, stream, sha) = match connected {
                Ok(Ok(c)) => c,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connecting timed out".to_string(),
                    };
                    if warned {
                        log_debug!(
                            "broker {}: still unavailable: {}",
                            self.url,
                            self.redact(why)
                        );
                    } else {
                        log_warn!(
                            "broker {} unavailable: {}; retrying",
                            self.url,
                            self.redact(why)
                        );
                        warned = true;
                    }
                    if !self.pause(backoff, &mut rx).await {
                        return self.drain(&mut rx);
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            self.set_up(true);
            log_info!("broker {} up: subscribed to {PATTERN}", self.url);
            let ended = self.serve(conn, stream, &sha, &mut rx).await;
            // Whatever got into the queue while we were up and is still there: lost with the rest.
            while let Ok(p) = rx.try_recv() {
                self.resolve(p, Err(PublishFailure::Lost));
            }
            match ended {
                Ended::Stopped => return self.drain(&mut rx),
                Ended::Down(why) => {
                    log_warn!(
                        "broker {} down: {}; reconnecting",
                        self.url,
                        self.redact(why)
                    );
                    warned = true;
                    if !self.pause(backoff, &mut rx).await {
                        return self.drain(&mut rx);
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.drain(&mut rx);
    }

    /// After the publisher stops: nothing more can be sent.
    fn drain(&self, rx: &mut mpsc::Receiver<Publish>) {
        rx.close();
        while let Ok(p) = rx.try_recv() {
            self.resolve(p, Err(PublishFailure::Unavailable));
        }
    }

    /// Waits `d` while answering arrivals `unavailable`; false when told to stop.
    async fn pause(&self, d: Duration, rx: &mut mpsc::Receiver<Publish>) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = self.stop.notified() => return false,
                _ = &mut sleep => return true,
                Some(p) = rx.recv() => self.resolve(p, Err(PublishFailure::Unavailable)),
            }
        }
    }

    fn client(&self) -> RedisResult<redis::Client> {
        let u = &self.url;
        let addr = if u.tls {
            ConnectionAddr::TcpTls {
                host: u.host.clone(),
                port: u.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(u.host.clone(), u.port)
        };
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(u.db);
        if let Some(user) = &u.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(pw) = &u.password {
            redis_info = redis_info.set_password(pw);
        }
        let info = addr.into_connection_info()?.set_redis_settings(redis_info);
        redis::Client::open(info)
    }

    /// While up: publishes out, confirmations and subscription messages in, a PING a second.
    async fn serve(
        &self,
        conn: MultiplexedConnection,
        mut stream: PubSubStream,
        sha: &str,
        rx: &mut mpsc::Receiver<Publish>,
    ) -> Ended {
        // The batch sent and unanswered, in the order sent; its answers come in the same order.
        let mut batch = Vec::<Publish>::new();
        let mut in_flight: Option<Batch> = None;
        // Publishes Redis answered NOSCRIPT (its script cache was flushed): sent again, with the
        // script's text (§5, EVAL), ahead of anything newer.
        let mut retry = Vec::<Publish>::new();
        let mut ping: Option<BoxFuture<'static, RedisResult<()>>> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            if in_flight.is_none() && !retry.is_empty() {
                batch = std::mem::take(&mut retry);
                in_flight = Some(send_batch(&conn, "EVAL", SCRIPT, &batch));
            }
            // Not `biased`: a busy subscription must not starve the publishes, nor they it.
            tokio::select! {
                _ = self.stop.notified() => break Ended::Stopped,
                msg = stream.next() => match msg {
                    Some(msg) => self.deliver(&msg),
                    None => break Ended::Down("the subscription connection closed".into()),
                },
                answers = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    let answers = match answers {
                        Ok(answers) if answers.len() == batch.len() => answers,
                        Ok(answers) => {
                            break Ended::Down(format!(
                                "{} answers to {} publishes", answers.len(), batch.len()
                            ));
                        }
                        Err(e) => break Ended::Down(format!("a publish failed: {e}")),
                    };
                    for (p, answer) in batch.drain(..).zip(answers) {
                        match answer {
                            Ok(_seq) => self.resolve(p, Ok(())),
                            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                                retry.push(p);
                            }
                            // The script itself failed (Redis out of memory, say): not published.
                            Err(e) => {
                                log_debug!("broker: publish refused: {}", self.redact(e.to_string()));
                                self.resolve(p, Err(PublishFailure::Lost));
                            }
                        }
                    }
                }
                result = async { ping.as_mut().expect("guarded").await }, if ping.is_some() => {
                    ping = None;
                    if let Err(e) = result {
                        break Ended::Down(format!("PING failed: {e}"));
                    }
                }
                _ = heartbeat.tick() => {
                    // An outstanding PING fails by itself after COMMAND_TIMEOUT.
                    if ping.is_none() {
                        let mut c = conn.clone();
                        ping = Some(Box::pin(async move {
                            redis::cmd("PING").query_async::<()>(&mut c).await
                        }));
                    }
                }
                // One batch in flight at a time: everything that queued up meanwhile goes out as
                // the next one, in one write, so publishes keep the order they were handled in
                // and the rate is not one per round trip.
                p = rx.recv(), if in_flight.is_none() && retry.is_empty() => match p {
                    Some(p) => {
                        batch.push(p);
                        while batch.len() < MAX_PENDING {
                            match rx.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(_) => break,
                            }
                        }
                        in_flight = Some(send_batch(&conn, "EVALSHA", sha, &batch));
                    }
                    None => break Ended::Stopped,
                },
            }
        };
        // Down before anyone hears of it: a sender told `lost` finds `/readyz` at 503, and
        // broadcasts from now on are answered `unavailable` without entering the queue.
        self.set_up(false);
        drop(in_flight);
        drop(conn);
        drop(stream);
        // Sent and not confirmed: maybe delivered, maybe not.
        for p in batch.into_iter().chain(retry) {
            self.resolve(p, Err(PublishFailure::Lost));
        }
        ended
    }

    /// One message from the subscription: the local fan-out of the room its channel names.
    fn deliver(&self, msg: &redis::Msg) {
        self.metrics.broker_received.inc();
        let Some(room) = msg.get_channel_name().strip_prefix(CHANNEL_PREFIX) else {
            return;
        };
        // Every node publishes JSON text; anything else can't go out in a text frame.
        let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
            log_debug!("broker: dropped a non-UTF-8 message on {CHANNEL_PREFIX}{room}");
            return;
        };
        if let Some(times) = self.hub.fan_out(room, text) {
            self.metrics.broadcast.observe(times.fan_out_secs);
        }
    }
}

/// A batch of publishes on its way: one answer per publish, in order.
type Batch = BoxFuture<'static, RedisResult<Vec<RedisResult<i64>>>>;

/// `EVALSHA sha 1 wslab:seq:R HEAD TAIL wslab:room:R` (or `EVAL script ...`) for each publish,
/// pipelined: written at once, answered in order, one answer per command even when some fail.
fn send_batch(
    conn: &MultiplexedConnection,
    verb: &str,
    script_or_sha: &str,
    batch: &[Publish],
) -> Batch {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for p in batch {
        pipe.cmd(verb)
            .arg(script_or_sha)
            .arg(1)
            .arg(format!("{SEQ_KEY_PREFIX}{}", p.room))
            .arg(&p.head[..])
            .arg(&p.tail[..])
            .arg(format!("{CHANNEL_PREFIX}{}", p.room));
    }
    let mut c = conn.clone();
    Box::pin(async move { pipe.query_async(&mut c).await })
}

/// Both connections, the script loaded and the pattern subscription confirmed: up.
async fn connect(
    client: &redis::Client,
) -> RedisResult<(MultiplexedConnection, PubSubStream, String)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        // Above the most that can wait (MAX_PENDING publishes and a PING), so a request never
        // waits to enter the driver's channel and goes out in the order it was made.
        .set_pipeline_buffer_size(MAX_PENDING + 16);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(&mut conn)
        .await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe(PATTERN).await?;
    // The sink only (un)subscribes; the stream keeps working without it.
    let (_sink, stream) = pubsub.split();
    Ok((conn, stream, sha))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script's SHA1 is what Redis computes for the exact text, so both kinds share one.
    #[test]
    fn script_is_the_protocol_text() {
        assert!(SCRIPT.starts_with("local seq = redis.call('INCR', KEYS[1])\n"));
        assert!(SCRIPT.ends_with("return seq\n"));
        assert_eq!(SCRIPT.lines().count(), 4);
    }
}
