//! `hold-agent`: a helper process of a multi-process hold (`hold --procs P`), started by `hold.rs`
//! and never by hand.
//!
//! Each process may have only so many open files (20,000 on the lab's machine, and root can't
//! raise it), so a hold of 100,000 connections needs several processes. A helper opens its share
//! of the connections with the same code as an in-process hold, prints one JSON line (how its
//! connects went, with its handshake histogram), holds them until a line or EOF on stdin, ends
//! them, and prints a second line (dropped connections, its own CPU time). The conductor does all
//! the measuring of the server.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::hold::{spawn_holders, AgentDone, AgentOpened, End, Exchange, Held, Shape};
use super::runner::Fleet;
use super::{Ctx, Load};
use crate::report::{Report, SharedHist};
use crate::sys;
use crate::{Common, Failure};

/// `hold-agent`'s command line, as `hold.rs` writes it.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[arg(short = 'n', long)]
    pub connections: u64,
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, value_enum)]
    pub exchange: Exchange,
    #[arg(long, value_enum)]
    pub end: End,
    #[arg(long, default_value_t = 0)]
    pub index: u64,
}

impl Load for AgentArgs {
    type Opts = AgentArgs;
    const MEASURES: bool = false;

    fn sockets(&self) -> u64 {
        self.connections
    }

    fn opts(self, _: &Common, _: usize) -> Result<AgentArgs, String> {
        Ok(self)
    }

    async fn run(ctx: Ctx, a: AgentArgs) -> Result<Option<Report>, Failure> {
        agent(
            ctx,
            a.connections,
            a.rate.max(0.0),
            a.exchange,
            a.end,
            a.index,
        )
        .await?;
        Ok(None)
    }
}

async fn agent(
    ctx: Ctx,
    n: u64,
    rate: f64,
    exchange: Exchange,
    end: End,
    index: u64,
) -> Result<(), String> {
    let hist = SharedHist::default();
    let mut fleet = Fleet::new();
    // Rooms are named after the helper's index and the conductor's pid, so helpers never share one.
    let tag = format!("{}-{index}", std::os::unix::process::parent_id());
    let shape = Shape {
        n,
        rate,
        exchange,
        end,
    };
    spawn_holders(&ctx, &mut fleet, shape, &hist, &tag).await;
    let c = fleet.connects().await;
    let opened = AgentOpened {
        attempts: c.attempts,
        opened: c.opened,
        failures: c.failures,
        server: c.server,
        hist: hist.pairs(),
        first_failure: ctx.tally.first_reason(),
    };
    println!(
        "{}",
        serde_json::to_string(&opened).map_err(|e| e.to_string())?
    );
    // Hold until the conductor says so (a line) or goes away (EOF); at most a day.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = tokio::time::timeout(Duration::from_secs(86_400), stdin.next_line()).await;
    fleet.stop();
    let joined = fleet.join(Duration::from_secs(60)).await;
    let cpu_s = sys::self_cpu_seconds();
    let done = AgentDone {
        dropped: joined.outs.iter().filter(|h| **h == Held::Dropped).count() as u64,
        all_finished: joined.all_finished,
        cpu_s,
        peak_rss: sys::self_peak_rss(),
    };
    println!(
        "{}",
        serde_json::to_string(&done).map_err(|e| e.to_string())?
    );
    Ok(())
}
