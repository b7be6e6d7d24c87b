//! The life of a mode's connection tasks, shared by every mode: spawn them, hear how each one's
//! first connect went, tell them all when to go and when to stop, and join them within a limit.
//!
//! hold, echo and broadcast open every connection before the measured window (so the window
//! measures load, not a handshake storm): each task reports its first connect through its
//! [`Cue`], the mode waits for all of them with [`Fleet::connects`], then gives `go` and, where
//! tasks don't stop at a deadline of their own, `stop`. sessions only spawns and joins: connecting
//! is its load. What a task returns is the mode's own per-task result type.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{Conn, Fail};
use crate::report::{bump, merge, Counts, Report};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Wait,
    /// Run until this instant.
    Go(Instant),
    Stop,
}

/// A first connect as a task reports it: its index, and the server's name or why it failed.
type ConnectReport = (usize, Result<String, Fail>);

/// The connection tasks of one run, each returning a `T`.
pub struct Fleet<T> {
    tasks: JoinSet<T>,
    spawned: usize,
    phase: watch::Sender<Phase>,
    /// Dropped by [`Fleet::connects`], so that it ends once every task has let go of its copy.
    connects_tx: Option<mpsc::UnboundedSender<ConnectReport>>,
    connects_rx: mpsc::UnboundedReceiver<ConnectReport>,
}

/// What one task is handed: its index (spawn order) and the way to report its first connect.
pub struct Cue {
    pub index: usize,
    connects: Option<mpsc::UnboundedSender<ConnectReport>>,
    phase: watch::Receiver<Phase>,
}

impl Cue {
    /// Tells the conductor how this task's first connect went, and lets go of the channel (the
    /// conductor counts reports until every task has). Returns the task's go/stop signal.
    pub fn connected(self, first: Result<&Conn, &Fail>) -> Signal {
        self.report(first.map(|c| c.server.as_str()))
    }

    fn report(self, server: Result<&str, &Fail>) -> Signal {
        if let Some(tx) = self.connects {
            let _ = tx.send((self.index, server.map(str::to_owned).map_err(Fail::clone)));
        }
        Signal(self.phase)
    }
}

/// A task's view of the conductor's go/stop signal.
pub struct Signal(watch::Receiver<Phase>);

impl Signal {
    /// Waits for go and returns the end of the measured window; `None` if told to stop first or
    /// the conductor is gone.
    pub async fn go(&mut self) -> Option<Instant> {
        match self.0.wait_for(|p| *p != Phase::Wait).await.map(|p| *p) {
            Ok(Phase::Go(end)) => Some(end),
            _ => None,
        }
    }

    /// Resolves once stop is given or the conductor is gone. Cancel-safe, for `select!` loops.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|p| *p == Phase::Stop).await;
    }
}

/// How the first connects of all tasks went.
#[derive(Debug, Default)]
pub struct Connects {
    pub attempts: u64,
    pub opened: u64,
    pub failures: Counts,
    /// The name the server gave in its welcome, if any connect got that far.
    pub server: Option<String>,
    /// By task index: did its first connect succeed?
    pub opened_by_task: Vec<bool>,
}

impl Connects {
    /// Adds the attempts and failures to the report and names its server. Opened connections are
    /// left to the mode: for most of them these were set-up, not part of the measured window.
    pub fn count_into(&self, r: &mut Report) {
        r.connect_attempts += self.attempts;
        merge(&mut r.connect_failures, &self.failures);
        if let Some(s) = &self.server {
            r.server = s.clone();
        }
    }
}

/// What came back from the tasks.
pub struct Joined<T> {
    /// One result per task that finished in time (a task that panicked has none).
    pub outs: Vec<T>,
    /// Every task finished within the limit.
    pub all_finished: bool,
}

impl<T: Send + 'static> Fleet<T> {
    pub fn new() -> Fleet<T> {
        let (connects_tx, connects_rx) = mpsc::unbounded_channel();
        Fleet {
            tasks: JoinSet::new(),
            spawned: 0,
            phase: watch::Sender::new(Phase::Wait),
            connects_tx: Some(connects_tx),
            connects_rx,
        }
    }

    /// Spawns one connection task. Spawn them all before [`Fleet::connects`].
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(Cue) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let cue = Cue {
            index: self.spawned,
            connects: self.connects_tx.clone(),
            phase: self.phase.subscribe(),
        };
        self.spawned += 1;
        self.tasks.spawn(task(cue));
    }

    /// Waits until every task has reported its first connect (or ended without one).
    pub async fn connects(&mut self) -> Connects {
        self.connects_tx = None;
        let mut c = Connects {
            opened_by_task: vec![false; self.spawned],
            ..Default::default()
        };
        // Bounded: one report per task at most, and it ends when the last sender is gone.
        while let Some((index, res)) = self.connects_rx.recv().await {
            c.attempts += 1;
            match res {
                Ok(server) => {
                    c.opened += 1;
                    c.server = Some(server);
                    if let Some(slot) = c.opened_by_task.get_mut(index) {
                        *slot = true;
                    }
                }
                Err(f) => bump(&mut c.failures, f.kind),
            }
        }
        c
    }

    /// Starts the measured window on every task; it ends at `end`.
    pub fn go(&self, end: Instant) {
        // send_replace: stored even if every task has already ended.
        self.phase.send_replace(Phase::Go(end));
    }

    /// Tells every task to stop.
    pub fn stop(&self) {
        self.phase.send_replace(Phase::Stop);
    }

    /// Collects the tasks' results for at most `limit`, then aborts whatever is left.
    pub async fn join(mut self, limit: Duration) -> Joined<T> {
        let mut outs = Vec::with_capacity(self.spawned);
        let all_finished = tokio::time::timeout(limit, async {
            while let Some(res) = self.tasks.join_next().await {
                if let Ok(o) = res {
                    outs.push(o);
                }
            }
        })
        .await
        .is_ok();
        self.tasks.abort_all();
        Joined { outs, all_finished }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_are_counted_then_go_and_stop_reach_every_task() {
        let mut fleet: Fleet<Option<Instant>> = Fleet::new();
        let (went_tx, mut went_rx) = mpsc::unbounded_channel();
        for _ in 0..4 {
            let went_tx = went_tx.clone();
            fleet.spawn(|cue| async move {
                // Task 1 fails its connect; the others reach a server.
                let f = Fail::new("refused", "test");
                let server = format!("srv-{}", cue.index);
                let mut signal = match cue.index {
                    1 => cue.report(Err(&f)),
                    _ => cue.report(Ok(&server)),
                };
                let end = signal.go().await;
                let _ = went_tx.send(());
                signal.stopped().await;
                end
            });
        }
        drop(went_tx);
        let c = fleet.connects().await;
        assert_eq!((c.attempts, c.opened), (4, 3));
        assert_eq!(c.failures.get("refused"), Some(&1));
        assert_eq!(c.opened_by_task, vec![true, false, true, true]);
        assert!(c.server.as_deref().is_some_and(|s| s.starts_with("srv-")));
        let mut r = Report::default();
        c.count_into(&mut r);
        assert_eq!((r.connect_attempts, r.failed_handshakes()), (4, 1));
        assert_eq!(r.conns_opened, 0);

        let end = Instant::now() + Duration::from_secs(1);
        fleet.go(end);
        for _ in 0..4 {
            went_rx.recv().await.expect("every task saw go");
        }
        fleet.stop();
        let j = fleet.join(Duration::from_secs(5)).await;
        assert!(j.all_finished);
        assert_eq!(j.outs, vec![Some(end); 4]);
    }

    #[tokio::test]
    async fn join_gives_up_at_its_limit() {
        let mut fleet: Fleet<()> = Fleet::new();
        fleet.spawn(|_cue| async {});
        fleet.spawn(|_cue| async { tokio::time::sleep(Duration::from_secs(3600)).await });
        let c = fleet.connects().await;
        assert_eq!(c.attempts, 0, "a task that never connects reports nothing");
        let t = Instant::now();
        let j = fleet.join(Duration::from_millis(100)).await;
        assert!(!j.all_finished);
        assert_eq!(j.outs.len(), 1);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
