//! The load shapes, one module each (and `agent`, a hold's helper process; `fanout` holds its
//! own helpers), and the context every one of them is handed.
//!
//! Each mode owns its command line: a clap `Args` struct beside its code, which implements
//! [`Load`] (its options checked and converted, and the run). `main` only dispatches: it builds a
//! [`Ctx`] from the options every mode shares and calls one mode, which returns a finished
//! [`Report`]. What the modes share lives beside them: [`runner`] spawns the connection tasks,
//! collects their first connects and tells them when to go and stop; [`meter`] measures the
//! window (CPU and RSS of both sides) and writes the notes every row carries.
//!
//! Every connection is one tokio task. Tasks connect under a shared semaphore (so a storm never
//! exceeds `--connect-concurrency` handshakes in flight). Every loop ends by a deadline, and
//! every wait has a timeout.

mod agent;
mod broadcast;
mod echo;
mod fanout;
mod hold;
mod meter;
mod reach;
mod runner;
mod sessions;
mod tally;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::{self, Conn, Fail};
use crate::probe::{BuildInfo, NodeInfo, Probe};
use crate::report::{NodeStats, Report, SharedHist};
use crate::sys;
use crate::target::Target;
use crate::{Common, Failure};

pub use agent::AgentArgs;
pub use broadcast::BroadcastArgs;
pub use echo::EchoArgs;
pub use fanout::{FanoutAgentArgs, FanoutArgs, FanoutStats};
pub use hold::HoldArgs;
pub use sessions::SessionArgs;
pub use tally::{Open, Tally};

/// A load mode's command line and its run.
pub trait Load {
    /// The mode's options, checked and in their units.
    type Opts;
    /// Connections one process of this mode holds at once (checked against RLIMIT_NOFILE).
    fn sockets(&self) -> u64;
    /// Client read buffer per connection when `--read-buffer` is not given.
    fn read_buffer(&self) -> usize {
        4096
    }
    /// Checks and converts the options, before anything connects. `read_buffer` is the one the
    /// run uses (hold passes it on to its helper processes).
    fn opts(self, common: &Common, read_buffer: usize) -> Result<Self::Opts, String>;
    /// Whether this process measures the run: finds and checks the server's pid, reads its
    /// build, shows progress and gives the run up when no handshake succeeds. Not a hold's helper
    /// process: its conductor does all that, and judges all the helpers' handshakes together.
    const MEASURES: bool = true;
    /// The run; `None` when the mode printed its own output (a hold's helper process).
    async fn run(ctx: Ctx, o: Self::Opts) -> Result<Option<Report>, Failure>;
}

/// One server a run sends load to (`--url`, repeated for several nodes), and how it is watched.
#[derive(Clone, Debug)]
pub struct Node {
    pub target: Target,
    pub probe: Probe,
    /// Its `ws_node_info` (node id and broker), read before the run; `None` for a server without
    /// the gauge, which then has no broker.
    pub info: Option<NodeInfo>,
    /// Handshakes that succeeded to this node: the spread of the run's connections.
    pub opened: Arc<AtomicU64>,
}

/// What every mode needs.
#[derive(Clone)]
pub struct Ctx {
    /// The first node's target and probe: what a single-server mode (hold) measures.
    pub target: Target,
    pub probe: Probe,
    /// Every node, in `--url` order; connections are spread round-robin over them.
    pub nodes: Arc<Vec<Node>>,
    /// Round-robin cursor over `nodes` for modes that don't choose (echo, sessions).
    pub next_node: Arc<AtomicUsize>,
    pub cfg: WebSocketConfig,
    pub connect_timeout: Duration,
    pub connect_sem: Arc<Semaphore>,
    pub text: String,
    pub threads: usize,
    pub label: String,
    /// Loopback source addresses to spread connections over (`--source-addrs`); empty = let the
    /// kernel pick (127.0.0.1).
    pub sources: Arc<Vec<IpAddr>>,
    /// Round-robin cursor over `sources`, shared by every task.
    pub next_source: Arc<AtomicUsize>,
    /// The server's build, as its `ws_build_info` said before the run.
    pub build: Option<BuildInfo>,
    /// Notes known before the run (how the server's pid was found), first in every report.
    pub notes: Vec<String>,
    /// Every handshake's outcome, live (for giving up a run where nothing works, and progress).
    pub tally: Arc<Tally>,
}

impl Ctx {
    /// One connect to the next node in turn (round-robin over `--url`s).
    async fn connect(&self, room: Option<&str>, hist: &SharedHist) -> Result<Conn, Fail> {
        let node = self.next_node.fetch_add(1, Ordering::Relaxed) % self.nodes.len().max(1);
        self.connect_to(node, room, hist).await
    }

    /// One connect (handshake and welcome) to node `node` under the shared semaphore; its time
    /// goes into `hist`.
    async fn connect_to(
        &self,
        node: usize,
        room: Option<&str>,
        hist: &SharedHist,
    ) -> Result<Conn, Fail> {
        let node = &self.nodes[node % self.nodes.len()];
        let _permit = self
            .connect_sem
            .acquire()
            .await
            .map_err(|_| Fail::new("internal", "semaphore closed"))?;
        let t = Instant::now();
        let source = match self.sources.len() {
            0 => None,
            n => Some(self.sources[self.next_source.fetch_add(1, Ordering::Relaxed) % n]),
        };
        match client::connect(&node.target, room, self.cfg, self.connect_timeout, source).await {
            Ok(mut c) => {
                hist.recorder().record(t.elapsed().as_micros() as u64);
                node.opened.fetch_add(1, Ordering::Relaxed);
                c.open = Some(self.tally.succeeded());
                Ok(c)
            }
            Err(f) => {
                self.tally.failed(&f);
                Err(f)
            }
        }
    }

    /// A report with what is known before the run: who ran what, where, on how many threads.
    fn report(&self, mode: &str) -> Report {
        Report {
            label: self.label.clone(),
            server_pid: self.probe.pid,
            server_profile: self.build.as_ref().map(|b| b.profile.clone()),
            notes: self.notes.clone(),
            mode: mode.into(),
            url: self.target.ws_uri(None),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeStats {
                    url: n.target.ws_uri(None),
                    node_id: n.info.as_ref().map(|i| i.node_id.clone()),
                    broker: n.info.as_ref().map(|i| i.broker.clone()),
                    pid: n.probe.pid,
                    ..Default::default()
                })
                .collect(),
            client_threads: self.threads as u64,
            client_cores: sys::usable_cores() as u64,
            ..Default::default()
        }
    }

    /// Fills each node's spread (connections opened to it) into the report.
    fn count_spread(&self, r: &mut Report) {
        for (n, s) in self.nodes.iter().zip(r.nodes.iter_mut()) {
            s.conns = n.opened.load(Ordering::Relaxed);
        }
    }
}
