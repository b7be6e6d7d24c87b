//! `ws-bench compare`: two servers' runs side by side, the ratios, and the budgets rust-ws is held
//! to (memory per idle connection, memory coming back, ≥ 5× python-ws, no failed handshake).
//!
//! Input is two JSON-lines files of reports (`ws-bench --json ... >> file`), one per server. Runs
//! are paired by `--label`.

use crate::report::{num, Report};

pub fn load(text: &str) -> Result<Vec<Report>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

fn key(r: &Report) -> String {
    if r.label.is_empty() {
        r.mode.clone()
    } else {
        r.label.clone()
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".into(),
    }
}

/// Markdown: per run, both rows and the ratios; then the budgets.
pub fn render(a: &[Report], b: &[Report]) -> String {
    let mut out = String::new();
    let an = a
        .first()
        .map(|r| r.server.clone())
        .unwrap_or_else(|| "A".into());
    let bn = b
        .first()
        .map(|r| r.server.clone())
        .unwrap_or_else(|| "B".into());
    out.push_str("## Runs\n\n");
    for ra in a {
        let k = key(ra);
        let rb = b.iter().find(|r| key(r) == k);
        out.push_str(&format!("### {k}\n\n{}\n{}\n", ra.header(), ra.row()));
        if let Some(rb) = rb {
            out.push_str(&format!("{}\n\n", rb.row()));
            out.push_str(&format!("{an} / {bn}: {}\n\n", ratios(ra, rb).join(", ")));
        } else {
            out.push_str(&format!("\n({bn} has no run labelled {k})\n\n"));
        }
    }
    for rb in b.iter().filter(|rb| !a.iter().any(|ra| key(ra) == key(rb))) {
        out.push_str(&format!(
            "### {}\n\n{}\n{}\n\n({an} has no such run)\n\n",
            key(rb),
            rb.header(),
            rb.row()
        ));
    }
    out.push_str(&budgets(a, b, &an, &bn));
    out
}

/// Rows as markdown tables, with a new header wherever the columns change.
pub fn show(rs: &[Report]) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for r in rs {
        let h = r.header();
        if h != last {
            if !last.is_empty() {
                out.push('\n');
            }
            out.push_str(&h);
            out.push('\n');
            last = h;
        }
        out.push_str(&r.row());
        out.push('\n');
    }
    out
}

fn ratios(a: &Report, b: &Report) -> Vec<String> {
    let mut v = Vec::new();
    match a.mode.as_str() {
        "hold" => {
            let (ha, hb) = (a.hold.as_ref(), b.hold.as_ref());
            v.push(format!(
                "memory per connection {}",
                ratio(
                    ha.and_then(|h| h.bytes_per_conn),
                    hb.and_then(|h| h.bytes_per_conn)
                )
            ));
            v.push(format!("conn/s {}", ratio(a.conn_per_s, b.conn_per_s)));
        }
        "broadcast" => {
            let d = |r: &Report| r.broadcast.as_ref().map(|x| x.deliveries_per_s);
            v.push(format!("deliveries/s **{}**", ratio(d(a), d(b))));
        }
        "sessions" => v.push(format!(
            "sessions/s **{}**",
            ratio(a.conn_per_s, b.conn_per_s)
        )),
        _ => {
            v.push(format!("req/s **{}**", ratio(a.req_per_s, b.req_per_s)));
            if a.conn_per_s.is_some() {
                v.push(format!("conn/s {}", ratio(a.conn_per_s, b.conn_per_s)));
            }
        }
    }
    let p99 = |r: &Report| r.latency.as_ref().map(|l| l.p99_us as f64);
    v.push(format!("p99 latency {}", ratio(p99(a), p99(b))));
    v.push(format!(
        "max rss {}",
        ratio(
            a.server_max_rss.map(|x| x as f64),
            b.server_max_rss.map(|x| x as f64)
        )
    ));
    v
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn budgets(a: &[Report], b: &[Report], an: &str, bn: &str) -> String {
    let mut s =
        format!("## Budgets ({an})\n\n| budget | {an} | {bn} | verdict |\n|---|---|---|---|\n");
    let hold = |rs: &[Report]| {
        rs.iter()
            .filter(|r| r.mode == "hold")
            .max_by_key(|r| r.connections)
            .cloned()
    };
    let (ha, hb) = (hold(a), hold(b));
    let per = |r: &Option<Report>| r.as_ref().and_then(|r| r.hold.as_ref()?.bytes_per_conn);
    let kib = |x: Option<f64>| {
        x.map(|x| format!("{:.1} KiB", x / 1024.0))
            .unwrap_or("-".into())
    };
    s.push_str(&format!(
        "| memory per idle connection ≤ 8 KiB at {} connections (RSS above idle) | {} | {} | {} |\n",
        ha.as_ref().map(|r| r.connections).unwrap_or(0),
        kib(per(&ha)),
        kib(per(&hb)),
        verdict(per(&ha).map(|x| x <= 8192.0))
    ));
    let back = |r: &Option<Report>| {
        let h = r.as_ref()?.hold.as_ref()?;
        Some(h.rss_idle_after? as f64 / h.rss_idle_before? as f64)
    };
    let times = |x: Option<f64>| x.map(|x| format!("{x:.2}× idle")).unwrap_or("-".into());
    s.push_str(&format!(
        "| memory comes back: RSS 5 s after disconnect ≤ 2× pre-load idle | {} | {} | {} |\n",
        times(back(&ha)),
        times(back(&hb)),
        verdict(back(&ha).map(|x| x <= 2.0))
    ));
    let five_x = |mode: &str, what: &str, f: &dyn Fn(&Report) -> Option<f64>| {
        // The unlimited echo run; the closed-loop broadcast run.
        let pick = |rs: &[Report]| {
            rs.iter()
                .find(|r| {
                    r.mode == mode
                        && r.requests_per_conn.is_none()
                        && r.broadcast.as_ref().is_none_or(|b| b.rate_per_conn == 0.0)
                })
                .cloned()
        };
        let (ra, rb) = (pick(a), pick(b));
        let (xa, xb) = (ra.as_ref().and_then(f), rb.as_ref().and_then(f));
        let sat_a = ra.as_ref().is_some_and(|r| r.client_saturated);
        let sat_b = rb.as_ref().is_some_and(|r| r.client_saturated);
        let v = match (xa, xb) {
            (Some(x), Some(y)) if y > 0.0 => {
                let (ok, k) = (x >= 5.0 * y, x / y);
                match (sat_a, sat_b) {
                    (false, false) => format!("{} ({k:.2}×)", verdict(Some(ok))),
                    (_, true) => format!(
                        "not shown ({k:.2}×): the client was saturated on the {bn} run, so the ratio may be overstated"
                    ),
                    (true, false) if ok => format!(
                        "{} (≥ {k:.2}×): the client was saturated on the {an} run, so {an}'s figure is a floor and the real ratio is higher",
                        verdict(Some(true))
                    ),
                    (true, false) => format!(
                        "not shown ({k:.2}×): the client was saturated on the {an} run, so its figure is only a floor"
                    ),
                }
            }
            _ => verdict(None).to_string(),
        };
        format!(
            "| {what} ≥ 5× {bn}, client not saturated | {} | {} | {v} |\n",
            num(xa),
            num(xb)
        )
    };
    s.push_str(&five_x("echo", "echo req/s", &|r| r.req_per_s));
    s.push_str(&five_x("broadcast", "broadcast deliveries/s", &|r| {
        r.broadcast.as_ref().map(|b| b.deliveries_per_s)
    }));
    let failed = |r: &Option<Report>| r.as_ref().map(|r| r.failed_handshakes());
    let f = |x: Option<u64>, r: &Option<Report>| match (x, r) {
        (Some(x), Some(r)) => format!("{x} of {}", r.connect_attempts),
        _ => "-".into(),
    };
    let ok = match (failed(&ha), failed(&hb)) {
        (Some(x), Some(y)) => Some(x == 0 && y == 0),
        _ => None,
    };
    s.push_str(&format!(
        "| no failed handshakes in the {}-connection storm, either server | {} | {} | {} |\n",
        ha.as_ref().map(|r| r.connections).unwrap_or(0),
        f(failed(&ha), &ha),
        f(failed(&hb), &hb),
        verdict(ok)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{BroadcastStats, HoldStats};

    fn rep(server: &str, mode: &str, label: &str) -> Report {
        Report {
            server: server.into(),
            mode: mode.into(),
            label: label.into(),
            connections: 10_000,
            connect_attempts: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn pairs_runs_and_judges_budgets() {
        let mut ha = rep("rust-ws", "hold", "hold-10k");
        ha.hold = Some(HoldStats {
            bytes_per_conn: Some(7000.0),
            rss_idle_before: Some(10),
            rss_idle_after: Some(30),
            ..Default::default()
        });
        let mut hb = rep("python-ws", "hold", "hold-10k");
        hb.hold = Some(HoldStats {
            bytes_per_conn: Some(12000.0),
            rss_idle_before: Some(10),
            rss_idle_after: Some(12),
            ..Default::default()
        });
        let mut ea = rep("rust-ws", "echo", "echo-inf");
        ea.req_per_s = Some(60_000.0);
        let mut eb = rep("python-ws", "echo", "echo-inf");
        eb.req_per_s = Some(10_000.0);
        let mut ba = rep("rust-ws", "broadcast", "broadcast");
        ba.broadcast = Some(BroadcastStats {
            deliveries_per_s: 500_000.0,
            ..Default::default()
        });
        ba.client_saturated = true;
        let mut bb = rep("python-ws", "broadcast", "broadcast");
        bb.broadcast = Some(BroadcastStats {
            deliveries_per_s: 50_000.0,
            ..Default::default()
        });

        let a = vec![ha, ea, ba];
        let b = vec![hb, eb, bb];
        let md = render(&a, &b);
        assert!(md.contains("### hold-10k"), "{md}");
        assert!(md.contains("req/s **6.00×**"), "{md}");
        assert!(md.contains("deliveries/s **10.00×**"), "{md}");
        let line = |needle: &str| md.lines().find(|l| l.contains(needle)).unwrap().to_string();
        assert!(line("memory per idle").contains("**met**"));
        assert!(line("memory comes back").contains("**not met**"));
        assert!(line("echo req/s ≥").contains("**met** (6.00×)"));
        assert!(line("broadcast deliveries/s ≥")
            .contains("**met** (≥ 10.00×): the client was saturated on the rust-ws run"));
        assert!(line("no failed handshakes").contains("**met**"));
    }

    #[test]
    fn loads_json_lines() {
        let r = rep("rust-ws", "echo", "x");
        let text = format!(
            "{}\n\n{}\n",
            serde_json::to_string(&r).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
        assert_eq!(load(&text).unwrap().len(), 2);
        assert!(load("{nope").unwrap_err().contains("line 1"));
        let md = show(&load(&text).unwrap());
        assert_eq!(md.lines().count(), 4, "{md}");
    }
}
