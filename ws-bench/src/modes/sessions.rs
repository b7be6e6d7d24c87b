//! sessions: W workers, each repeating a whole short session as fast as it can: connect to a room
//! of its own, broadcast, receive its own message back, close. Sessions/s, failures, and the
//! time a whole session takes.
//!
//! Connecting is this mode's load, so nothing is opened beforehand: the runner only spawns the
//! workers and joins them after the deadline, and this file sums what each counted.

use std::time::{Duration, Instant};

use tokio::time::{sleep, timeout_at};

use super::meter::{common_notes, Meter};
use super::runner::Fleet;
use super::{Ctx, Load};
use crate::client::{self, Fail};
use crate::report::{bump, merge, Counts, Report, SharedHist};
use crate::{secs, Common, Failure};

/// `sessions`'s command line.
#[derive(clap::Args, Debug)]
pub struct SessionArgs {
    #[arg(short = 'c', long, default_value_t = 50)]
    pub workers: u64,
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration_secs: f64,
}

impl Load for SessionArgs {
    type Opts = SessionOpts;

    fn sockets(&self) -> u64 {
        self.workers
    }

    fn opts(self, _: &Common, _: usize) -> Result<SessionOpts, String> {
        Ok(SessionOpts {
            workers: self.workers,
            duration: secs(self.duration_secs, "--duration-secs")?,
        })
    }

    async fn run(ctx: Ctx, o: SessionOpts) -> Result<Option<Report>, Failure> {
        Ok(Some(sessions(ctx, o).await))
    }
}

pub struct SessionOpts {
    pub workers: u64,
    pub duration: Duration,
}

/// What one worker counted.
#[derive(Debug, Default)]
struct SessionOut {
    /// Sessions completed.
    sessions: u64,
    connect_attempts: u64,
    connect_failures: Counts,
    /// Failures after the connect.
    errors: Counts,
    /// The name the server gave in its welcome, once any connect got that far.
    server: Option<String>,
}

async fn sessions(ctx: Ctx, o: SessionOpts) -> Report {
    let mut r = ctx.report("sessions");
    r.connections = o.workers;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    let meter = Meter::start(&ctx).await;
    let end = Instant::now() + o.duration;
    ctx.tally.phase("sessions", Some(o.duration));
    let mut fleet = Fleet::new();
    for w in 0..o.workers {
        let (ctx, lat, conn_hist) = (ctx.clone(), lat.clone(), conn_hist.clone());
        // No cue: there is no set-up connect to report and no go to wait for.
        fleet.spawn(move |_cue| async move {
            let mut out = SessionOut::default();
            let mut rec = lat.recorder();
            // Each worker's own room: it is created on connect and gone on close, every session.
            let room = format!("bench-s-{w}");
            let mut server = None;
            while Instant::now() < end {
                let t = Instant::now();
                out.connect_attempts += 1;
                let session = async {
                    let mut c = ctx
                        .connect(Some(&room), &conn_hist)
                        .await
                        .map_err(|f| (true, f))?;
                    server = Some(c.server.clone());
                    client::send(
                        &mut c.ws,
                        client::broadcast_msg(&ctx.text, "s", client::now_us()),
                    )
                    .await
                    .map_err(|f| (false, f))?;
                    for _ in 0..1000 {
                        let text = client::recv_text(&mut c.ws).await.map_err(|f| (false, f))?;
                        let m = client::parse(&text).map_err(|f| (false, f))?;
                        let own = m.from.as_deref() == Some(c.conn_id.as_str())
                            && m.reference.as_deref() == Some("s");
                        if m.kind.as_deref() == Some("broadcast") && own {
                            return match client::close(c.ws, ctx.connect_timeout).await {
                                Ok(true) => Ok(()),
                                Ok(false) => {
                                    Err((false, Fail::new("unclean_close", "no close handshake")))
                                }
                                Err(f) => Err((false, f)),
                            };
                        }
                    }
                    Err((false, Fail::new("protocol", "own message never came back")))
                };
                match timeout_at(end.into(), session).await {
                    Err(_) => {
                        out.connect_attempts -= 1; // cut by the deadline: neither success nor failure
                        break;
                    }
                    Ok(Ok(())) => {
                        rec.record(t.elapsed().as_micros() as u64);
                        out.sessions += 1;
                    }
                    Ok(Err((during_connect, f))) => {
                        if during_connect {
                            bump(&mut out.connect_failures, f.kind);
                        } else {
                            bump(&mut out.errors, f.kind);
                        }
                        // Don't spin on a server that refuses: a short pause per failure.
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out.server = server;
            out
        });
    }
    let joined = fleet.join(o.duration + Duration::from_secs(30)).await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64().min(wall.as_secs_f64());
    for out in &joined.outs {
        r.requests += out.sessions;
        r.connect_attempts += out.connect_attempts;
        merge(&mut r.connect_failures, &out.connect_failures);
        merge(&mut r.errors, &out.errors);
        if let Some(s) = &out.server {
            r.server = s.clone();
        }
    }
    r.conns_opened = r.requests;
    r.duration_s = d;
    r.conn_per_s = Some(r.requests as f64 / d);
    r.req_per_s = Some(r.requests as f64 / d);
    r.latency = lat.summary();
    r.connect_latency = conn_hist.summary();
    common_notes(&ctx, &mut r);
    r.notes.push(format!(
        "{} workers; a session = connect, broadcast in own room, receive it, close; req/s = conn/s = sessions/s; latency = whole session",
        o.workers
    ));
    r
}
