//! Rooms, their members and each member's outbound queue.
//!
//! Twin: python-ws/python_ws/hub.py.
//!
//! Locks here are `std::sync::Mutex` and are only ever held for in-memory work: never across an
//! `.await`. A fan-out pushes an already serialised, reference-counted payload onto each member's
//! queue with a non-blocking push, so one slow reader can never stall a room.
//!
//! Queues hold whole WebSocket frames ([`text_frame`]), not payloads: a server's frames are
//! unmasked, so a broadcast's frame is the same bytes for every recipient and is built once,
//! and the writer copies it into its batch without framing it again per recipient.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Bytes;

use crate::protocol;

/// Why the server is ending a connection from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// The outbound queue was full when a message arrived for it.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
}

/// What the connection's writer gets next.
#[derive(Debug)]
pub enum Next {
    /// A whole text frame (see [`text_frame`]).
    Message(Bytes),
    Kill(Kill),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was full: the outbox is now killed as a slow consumer.
    Full,
    /// The outbox was already killed; the message is dropped.
    Closed,
}

/// A connection's bounded outbound queue: many pushers (fan-outs), one reader (its own task).
///
/// A `VecDeque` behind a mutex plus a `Notify` is smaller per idle connection than a tokio mpsc
/// channel (which allocates a 32-slot block up front) and carries the kill signal in the same
/// place, so a fan-out that finds the queue full marks it killed in the same critical section.
pub struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
}

struct OutboxState {
    queue: VecDeque<Bytes>,
    kill: Option<Kill>,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState {
                queue: VecDeque::new(),
                kill: None,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A poisoned lock means a panic elsewhere while holding it; the queue itself is still
        // consistent (every critical section is a single push/pop), so carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues `msg` unless the queue already holds `capacity` messages; never waits.
    pub fn push(&self, msg: Bytes, capacity: usize) -> Push {
        let result = {
            let mut s = self.lock();
            if s.kill.is_some() {
                return Push::Closed;
            }
            if s.queue.len() >= capacity {
                s.kill = Some(Kill::SlowConsumer);
                // Nothing queued will be written now: free it at once.
                s.queue = VecDeque::new();
                Push::Full
            } else {
                s.queue.push_back(msg);
                Push::Queued
            }
        };
        // notify_one keeps a permit when the reader isn't waiting yet, so no wake-up is lost.
        self.notify.notify_one();
        result
    }

    /// Marks the outbox killed (the first reason wins) and drops what is queued.
    pub fn kill(&self, why: Kill) {
        {
            let mut s = self.lock();
            if s.kill.is_none() {
                s.kill = Some(why);
            }
            s.queue = VecDeque::new();
        }
        self.notify.notify_one();
    }

    pub fn killed(&self) -> Option<Kill> {
        self.lock().kill
    }

    /// The next message without waiting; `None` when empty or killed.
    pub fn try_pop(&self) -> Option<Bytes> {
        let mut s = self.lock();
        if s.kill.is_some() {
            return None;
        }
        let msg = s.queue.pop_front();
        // After a burst the deque keeps its capacity; give large buffers back once drained so
        // idle connections stay small.
        if s.queue.is_empty() && s.queue.capacity() > 64 {
            s.queue = VecDeque::new();
        }
        msg
    }

    /// Waits for the next message or a kill; a kill wins over queued messages.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut s = self.lock();
                if let Some(k) = s.kill {
                    return Next::Kill(k);
                }
                if let Some(m) = s.queue.pop_front() {
                    if s.queue.is_empty() && s.queue.capacity() > 64 {
                        s.queue = VecDeque::new();
                    }
                    return Next::Message(m);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Waits until the outbox is killed.
    pub async fn wait_killed(&self) -> Kill {
        loop {
            if let Some(k) = self.killed() {
                return k;
            }
            self.notify.notified().await;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

/// A final, unmasked text frame carrying `payload` (RFC 6455 §5.2), as a server sends it.
pub fn text_frame(payload: &str) -> Bytes {
    let n = payload.len();
    let mut f = Vec::with_capacity(n + 10);
    f.push(0x81); // FIN + text
    if n < 126 {
        f.push(n as u8);
    } else if n <= 0xFFFF {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(payload.as_bytes());
    f.into()
}

struct Member {
    id: u64,
    outbox: Arc<Outbox>,
}

struct RoomState {
    seq: u64,
    members: Vec<Member>,
}

/// A room: a name, its broadcast counter and its members. It exists while it has members.
pub struct Room {
    name: Box<str>,
    state: Mutex<RoomState>,
}

impl Room {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Time spent finishing a broadcast's payload (handling) and fanning it out (broadcast).
#[derive(Debug, Clone, Copy)]
pub struct FanOutTimes {
    pub finish_secs: f64,
    pub fan_out_secs: f64,
    pub recipients: usize,
}

struct HubState {
    rooms: HashMap<Box<str>, Arc<Room>>,
    shutting_down: bool,
}

/// Every room of one server instance.
pub struct Hub {
    state: Mutex<HubState>,
    next_id: AtomicU64,
    send_queue: usize,
    /// `WS_NODE_ID` with a broker: conn_ids are then `NODE_ID:N` (PROTOCOL.md §3).
    node: Option<Box<str>>,
}

impl Hub {
    pub fn new(send_queue: usize) -> Hub {
        Hub {
            state: Mutex::new(HubState {
                rooms: HashMap::new(),
                shutting_down: false,
            }),
            next_id: AtomicU64::new(1),
            send_queue,
            node: None,
        }
    }

    /// A hub whose conn_ids are `node:N`: one node of a cluster (PROTOCOL.md §5).
    pub fn with_node(send_queue: usize, node: &str) -> Hub {
        Hub {
            node: Some(node.into()),
            ..Hub::new(send_queue)
        }
    }

    /// The conn_id prefix, `Some` only with a broker.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn send_queue(&self) -> usize {
        self.send_queue
    }

    /// A conn_id unique within this server run.
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection to `room_name` (creating the room) and queues its welcome first, under
    /// the room lock, so no broadcast can overtake it. `None` once shutdown has begun.
    pub fn join(&self, room_name: &str, id: u64, outbox: &Arc<Outbox>) -> Option<Arc<Room>> {
        let mut hub = self.lock();
        if hub.shutting_down {
            return None;
        }
        // Look up before inserting: `entry()` would allocate a key on every join.
        let room = match hub.rooms.get(room_name) {
            Some(room) => room.clone(),
            None => {
                let room = Arc::new(Room {
                    name: room_name.into(),
                    state: Mutex::new(RoomState {
                        seq: 0,
                        members: Vec::new(),
                    }),
                });
                hub.rooms.insert(room_name.into(), room.clone());
                room
            }
        };
        {
            let mut r = room.lock();
            r.members.push(Member {
                id,
                outbox: outbox.clone(),
            });
            let conn_id = protocol::ConnId {
                node: self.node(),
                n: id,
            };
            let welcome = protocol::welcome(conn_id, room_name, r.members.len());
            outbox.push(text_frame(&welcome), self.send_queue);
        }
        Some(room)
    }

    /// Removes a connection; the room goes when its last member does.
    pub fn leave(&self, room: &Arc<Room>, id: u64) {
        let mut hub = self.lock();
        let now_empty = {
            let mut r = room.lock();
            if let Some(i) = r.members.iter().position(|m| m.id == id) {
                r.members.swap_remove(i);
            }
            r.members.is_empty()
        };
        if now_empty {
            // Only remove the map's entry if it is this very room.
            if hub
                .rooms
                .get(room.name())
                .is_some_and(|r| Arc::ptr_eq(r, room))
            {
                hub.rooms.remove(room.name());
            }
        }
    }

    /// Assigns the room's next `seq`, completes the payload with `finish` and pushes the same
    /// bytes to every member. A member whose queue is full is evicted (killed as a slow consumer
    /// and removed from the room) and the message is dropped for it alone.
    ///
    /// Both steps run under the room lock, so members see broadcasts in `seq` order. They are
    /// timed separately: finishing the payload is handling, pushing it is the fan-out. Waiting
    /// for the lock is neither.
    pub fn broadcast<F>(&self, room: &Room, finish: F) -> FanOutTimes
    where
        F: FnOnce(u64) -> String,
    {
        let capacity = self.send_queue;
        let mut r = room.lock();
        let t0 = Instant::now();
        r.seq += 1;
        // Serialised and framed once; every member gets the same bytes.
        let payload = text_frame(&finish(r.seq));
        let t1 = Instant::now();
        let mut evicted = false;
        for m in &r.members {
            if m.outbox.push(payload.clone(), capacity) == Push::Full {
                evicted = true;
            }
        }
        if evicted {
            // Killed outboxes take no more messages; drop them from the room now.
            r.members.retain(|m| m.outbox.killed().is_none());
        }
        let recipients = r.members.len();
        let t2 = Instant::now();
        FanOutTimes {
            finish_secs: (t1 - t0).as_secs_f64(),
            fan_out_secs: (t2 - t1).as_secs_f64(),
            recipients,
        }
    }

    /// Fans a broadcast the broker delivered out to this node's members of `room_name`, if it has
    /// any: framed once, pushed like [`Hub::broadcast`] pushes (evicting full queues). The room's
    /// own `seq` is not used: the text already carries the one Redis assigned (PROTOCOL.md §5).
    /// `None` when the room has no member here; else the time spent pushing.
    pub fn fan_out(&self, room_name: &str, payload: &str) -> Option<FanOutTimes> {
        let room = self.lock().rooms.get(room_name)?.clone();
        let frame = text_frame(payload);
        let capacity = self.send_queue;
        let mut r = room.lock();
        let t1 = Instant::now();
        let mut evicted = false;
        for m in &r.members {
            if m.outbox.push(frame.clone(), capacity) == Push::Full {
                evicted = true;
            }
        }
        if evicted {
            r.members.retain(|m| m.outbox.killed().is_none());
        }
        let recipients = r.members.len();
        Some(FanOutTimes {
            finish_secs: 0.0,
            fan_out_secs: t1.elapsed().as_secs_f64(),
            recipients,
        })
    }

    /// Stops new joins and tells every connection to close with 1001.
    pub fn shutdown(&self) {
        let mut hub = self.lock();
        hub.shutting_down = true;
        for room in hub.rooms.values() {
            for m in &room.lock().members {
                m.outbox.kill(Kill::Shutdown);
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    pub fn room_count(&self) -> usize {
        self.lock().rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload of a short text frame.
    fn text(b: &Bytes) -> &str {
        assert_eq!(b[0], 0x81);
        assert!(b[1] < 126);
        std::str::from_utf8(&b[2..]).unwrap()
    }

    fn frame(s: &str) -> Bytes {
        text_frame(s)
    }

    #[test]
    fn text_frames_use_the_shortest_length_form() {
        assert_eq!(&text_frame("ab")[..], [0x81, 2, b'a', b'b']);
        let f = text_frame(&"x".repeat(126));
        assert_eq!((&f[..4], f.len()), (&[0x81, 126, 0, 126][..], 130));
        let f = text_frame(&"x".repeat(70_000));
        assert_eq!(&f[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(f.len(), 70_010);
    }

    #[tokio::test]
    async fn outbox_is_bounded_and_a_full_push_kills() {
        let o = Outbox::new();
        assert_eq!(o.push(frame("a"), 2), Push::Queued);
        assert_eq!(o.push(frame("b"), 2), Push::Queued);
        assert_eq!(o.len(), 2);
        assert_eq!(o.push(frame("c"), 2), Push::Full);
        assert_eq!(o.killed(), Some(Kill::SlowConsumer));
        assert_eq!(o.push(frame("d"), 2), Push::Closed);
        assert!(matches!(o.next().await, Next::Kill(Kill::SlowConsumer)));
        assert!(o.try_pop().is_none());
    }

    #[tokio::test]
    async fn outbox_delivers_in_order_and_wakes_the_reader() {
        let o = Arc::new(Outbox::new());
        let reader = {
            let o = o.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 3 {
                    match o.next().await {
                        Next::Message(m) => got.push(text(&m).to_string()),
                        Next::Kill(k) => panic!("killed {k:?}"),
                    }
                }
                got
            })
        };
        for m in ["1", "2", "3"] {
            tokio::task::yield_now().await;
            assert_eq!(o.push(frame(m), 10), Push::Queued);
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ["1", "2", "3"]);
    }

    #[tokio::test]
    async fn kill_wakes_a_waiting_reader() {
        let o = Arc::new(Outbox::new());
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_killed().await })
        };
        tokio::task::yield_now().await;
        o.kill(Kill::Shutdown);
        let k = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(k, Kill::Shutdown);
    }

    #[test]
    fn rooms_count_members_and_vanish_when_empty() {
        let hub = Hub::new(8);
        let (a, b) = (Arc::new(Outbox::new()), Arc::new(Outbox::new()));
        let ra = hub.join("lobby", 1, &a).unwrap();
        let rb = hub.join("lobby", 2, &b).unwrap();
        assert!(Arc::ptr_eq(&ra, &rb));
        assert_eq!(ra.len(), 2);
        let welcome = b.try_pop().unwrap();
        assert!(text(&welcome).contains(r#""connections":2"#));
        hub.leave(&ra, 1);
        assert_eq!(hub.room_count(), 1);
        hub.leave(&rb, 2);
        assert_eq!(hub.room_count(), 0);
        // A new room of the same name starts its seq at 1 again.
        let c = Arc::new(Outbox::new());
        let rc = hub.join("lobby", 3, &c).unwrap();
        hub.broadcast(&rc, |seq| seq.to_string());
        c.try_pop();
        assert_eq!(text(&c.try_pop().unwrap()), "1");
    }

    #[test]
    fn broadcast_shares_one_payload_and_evicts_only_the_full_queue() {
        let hub = Hub::new(2);
        let fast = Arc::new(Outbox::new());
        let slow = Arc::new(Outbox::new());
        let room = hub.join("r", 1, &fast).unwrap();
        hub.join("r", 2, &slow).unwrap();
        fast.try_pop();
        // slow keeps its welcome unread: one more fits, the next overflows.
        let t = hub.broadcast(&room, |seq| format!("m{seq}"));
        assert_eq!(t.recipients, 2);
        assert_eq!(text(&fast.try_pop().unwrap()), "m1");
        let t = hub.broadcast(&room, |seq| format!("m{seq}"));
        assert_eq!(t.recipients, 1, "slow consumer evicted");
        assert_eq!(slow.killed(), Some(Kill::SlowConsumer));
        assert_eq!(text(&fast.try_pop().unwrap()), "m2");
        assert!(t.fan_out_secs >= 0.0 && t.finish_secs >= 0.0);
        assert_eq!(room.len(), 1);
        hub.leave(&room, 2); // the evicted connection leaves later: harmless
        assert_eq!(room.len(), 1);
    }

    #[test]
    fn fan_out_serves_local_members_of_the_named_room_only() {
        let hub = Hub::with_node(4, "n1");
        let (a, b) = (Arc::new(Outbox::new()), Arc::new(Outbox::new()));
        hub.join("r", 1, &a).unwrap();
        hub.join("other", 2, &b).unwrap();
        assert!(text(&a.try_pop().unwrap()).contains(r#""conn_id":"n1:1""#));
        b.try_pop();
        assert!(hub.fan_out("nobody-here", "x").is_none());
        let t = hub.fan_out("r", r#"{"seq":7}"#).unwrap();
        assert_eq!(t.recipients, 1);
        assert_eq!(text(&a.try_pop().unwrap()), r#"{"seq":7}"#);
        assert!(b.try_pop().is_none());
    }

    #[test]
    fn shutdown_kills_members_and_refuses_joins() {
        let hub = Hub::new(4);
        let a = Arc::new(Outbox::new());
        hub.join("x", 1, &a).unwrap();
        hub.shutdown();
        assert_eq!(a.killed(), Some(Kill::Shutdown));
        assert!(hub.join("x", 2, &Arc::new(Outbox::new())).is_none());
        assert!(hub.is_shutting_down());
    }
}
