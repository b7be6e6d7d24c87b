//! Reach and order of a broadcast run: did every member get every broadcast of its room, once,
//! in one `seq` order, the same on every node (PROTOCOL.md §3 and §5)?
//!
//! A lab with several processes can measure a fine deliveries/s while each broadcast reaches only
//! its sender's process (a published Socket.IO-style test once measured a reach of 0.5 when rooms
//! spanned two processes and never noticed). So every broadcast run counts, exactly:
//!
//! - **reach**: deliveries received ÷ deliveries owed, over the members that stayed connected to
//!   the end; each is owed every broadcast sent to its room during the run (all members connect
//!   before the first send). Overall and per node; a member that dropped out is counted apart.
//! - **order**: each member's `seq` must rise by exactly one per delivery. A `seq` not above the
//!   previous one is a violation; a jump skips `seq` numbers (gaps).
//! - **one sequence across nodes**: a broadcast (`from`, `sent_at`: ws-bench stamps each of a
//!   sender's broadcasts with a distinct microsecond) must carry the same `seq` on every member.
//!   Keeping every (broadcast, seq) pair would cost memory per delivery, so each member keeps a
//!   sum of a 64-bit hash of (seq, from, sent_at) instead. Two members that saw the same `seq`
//!   range with no gap saw the same broadcasts under the same numbers exactly when their sums
//!   agree (barring a 64-bit collision); a member whose sum differs from its room's most common
//!   one is counted as disagreeing.
//!
//! The per-delivery work is [`SeqCheck::see`]: two comparisons and a hash of a few bytes.

use std::collections::HashMap;

use crate::report::{BroadcastStats, NodeStats};

/// One member's view of its room's sequence.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SeqCheck {
    /// Deliveries seen, and the first and last `seq`.
    pub count: u64,
    pub first: u64,
    pub last: u64,
    pub violations: u64,
    pub gaps: u64,
    /// Sum (wrapping) of `mix(seq, from, sent_at)` over every delivery.
    pub digest: u64,
}

impl SeqCheck {
    /// One delivery.
    pub fn see(&mut self, seq: u64, from: &str, sent_at: Option<u64>) {
        if self.count == 0 {
            self.first = seq;
        } else if seq <= self.last {
            self.violations += 1;
        } else {
            self.gaps += seq - self.last - 1;
        }
        self.last = seq;
        self.count += 1;
        self.digest = self.digest.wrapping_add(mix(seq, from, sent_at));
    }
}

/// FNV-1a over `from`, then splitmix64's finaliser over it with `sent_at` and `seq`: cheap, and
/// every input bit moves every output bit.
fn mix(seq: u64, from: &str, sent_at: Option<u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in from.as_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z =
        h ^ sent_at.unwrap_or(u64::MAX).rotate_left(17) ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What one member (connection task) brings to the reckoning.
#[derive(Debug, Default)]
pub struct Member {
    pub room: usize,
    pub node: usize,
    /// Its first connect succeeded (it is one of its room's members).
    pub opened: bool,
    /// It stayed connected until told to stop (or the drain ended).
    pub stayed: bool,
    /// Broadcasts it received in the window and drain.
    pub received: u64,
    pub seq: SeqCheck,
}

/// Fills reach (overall and per node) and the order counts into `b` and `nodes`, given what each
/// room was sent in the run.
pub fn reckon(
    members: &[&Member],
    sent_per_room: &[u64],
    b: &mut BroadcastStats,
    nodes: &mut [NodeStats],
) {
    // Room -> (first, last) -> digest -> members, among members that can be compared.
    let mut views: HashMap<(usize, u64, u64), HashMap<u64, u64>> = HashMap::new();
    for m in members.iter().filter(|m| m.opened) {
        b.seq_violations += m.seq.violations;
        b.seq_gaps += m.seq.gaps;
        if !m.stayed {
            b.members_dropped += 1;
            continue;
        }
        let owed = sent_per_room.get(m.room).copied().unwrap_or(0);
        b.reach_received += m.received;
        b.reach_expected += owed;
        if let Some(n) = nodes.get_mut(m.node) {
            n.received += m.received;
            n.expected += owed;
        }
        if m.seq.count > 0 && m.seq.violations == 0 && m.seq.gaps == 0 {
            *views
                .entry((m.room, m.seq.first, m.seq.last))
                .or_default()
                .entry(m.seq.digest)
                .or_default() += 1;
        }
    }
    for digests in views.values() {
        let all: u64 = digests.values().sum();
        let most = digests.values().copied().max().unwrap_or(0);
        b.seq_disagreements += all - most;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(room: usize, node: usize, seqs: &[(u64, &str, u64)]) -> Member {
        let mut m = Member {
            room,
            node,
            opened: true,
            stayed: true,
            ..Default::default()
        };
        for &(seq, from, at) in seqs {
            m.seq.see(seq, from, Some(at));
            m.received += 1;
        }
        m
    }

    #[test]
    fn counts_violations_and_gaps() {
        let mut s = SeqCheck::default();
        for seq in [5, 6, 9, 9, 3, 4] {
            s.see(seq, "a", Some(1));
        }
        assert_eq!((s.first, s.last, s.count), (5, 4, 6));
        // 9 after 9 and 3 after 9 are violations; 6 -> 9 skips 7 and 8.
        assert_eq!((s.violations, s.gaps), (2, 2));
    }

    #[test]
    fn full_reach_in_one_order_is_clean() {
        let seqs = [(1, "n1:1", 10), (2, "n2:1", 11), (3, "n1:1", 12)];
        let ms = [
            member(0, 0, &seqs),
            member(0, 1, &seqs),
            member(0, 0, &seqs),
        ];
        let mut b = BroadcastStats::default();
        let mut nodes = vec![NodeStats::default(), NodeStats::default()];
        reckon(&ms.iter().collect::<Vec<_>>(), &[3], &mut b, &mut nodes);
        assert_eq!((b.reach_received, b.reach_expected), (9, 9));
        assert_eq!((nodes[0].received, nodes[0].expected), (6, 6));
        assert_eq!((nodes[1].received, nodes[1].expected), (3, 3));
        assert_eq!(b.reach_failure(), None);
        assert_eq!(b.order(), "ok");
    }

    /// Two servers without a broker: each member sees only its own node's broadcasts, numbered
    /// by its own node. Reach is 50% and the members' numbering disagrees.
    #[test]
    fn two_nodes_without_a_broker_are_named() {
        let a = [(1, "1", 10), (2, "1", 12)];
        let b_ = [(1, "1", 11), (2, "1", 13)];
        let ms = [member(0, 0, &a), member(0, 0, &a), member(0, 1, &b_)];
        let mut b = BroadcastStats::default();
        let mut nodes = vec![NodeStats::default(), NodeStats::default()];
        reckon(&ms.iter().collect::<Vec<_>>(), &[4], &mut b, &mut nodes);
        assert_eq!((b.reach_received, b.reach_expected), (6, 12));
        assert_eq!(nodes[1].reach_pct(), Some(50.0));
        assert_eq!(b.seq_disagreements, 1);
        let why = b.reach_failure().unwrap();
        assert!(
            why.contains("REACH 50.0% (6 of 12") && why.contains("1 members disagreeing"),
            "{why}"
        );
    }

    #[test]
    fn a_member_that_dropped_is_counted_apart() {
        let mut gone = member(0, 0, &[(1, "x", 1)]);
        gone.stayed = false;
        let never = Member::default();
        let ms = [member(0, 1, &[(1, "x", 1), (2, "x", 2)]), gone, never];
        let mut b = BroadcastStats::default();
        let mut nodes = vec![NodeStats::default(), NodeStats::default()];
        reckon(&ms.iter().collect::<Vec<_>>(), &[2], &mut b, &mut nodes);
        assert_eq!(
            (b.reach_received, b.reach_expected, b.members_dropped),
            (2, 2, 1)
        );
        assert_eq!(nodes[0].expected, 0);
    }
}
