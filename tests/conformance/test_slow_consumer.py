"""PROTOCOL.md section 3, Slow consumers: a reader that stops reading is closed with 1008 and
counted as `slow_consumer`, while everyone else in the room keeps receiving everything.

The slow reader is a raw socket with a tiny SO_RCVBUF that reads its welcome and then nothing.
A sender broadcasts 16 KiB messages (4096 four-byte characters) in lock-step with a healthy
reader, so only the slow reader's queue (WS_SEND_QUEUE=8) can fill up: the kernel's socket
buffers take a few MiB first, then the queue's 8 messages, then the reader is evicted. The loop is
bounded by MAX_MESSAGES and DEADLINE_SECS.
"""

from __future__ import annotations

import time

import pytest
from harness import running_server

from .support import OP_CLOSE, OP_TEXT, Clients, unique_room, value_of, wait_for_sample

SEND_QUEUE = 8
MAX_MESSAGES = 2000
DEADLINE_SECS = 40.0
BIG_TEXT = "😀" * 4096  # 4096 characters, 16 KiB of UTF-8


@pytest.fixture(scope="module")
def slow_server(kind):
    with running_server(kind, {"WS_SEND_QUEUE": str(SEND_QUEUE)}) as srv:
        yield srv


def slow_consumer_count(server) -> float:
    return value_of(server, "ws_closed_conns_errors_total", reason="slow_consumer")


def test_slow_reader_is_evicted_and_others_get_everything(slow_server):
    server = slow_server
    room = unique_room()
    assert slow_consumer_count(server) == 0
    with Clients(server) as cs:
        # max_queue=None: the library reads continuously, so these two never back up the server.
        sender = cs.join(room, max_queue=None)
        healthy = cs.join(room, max_queue=None)
        slow = cs.raw(f"/ws?room={room}", rcvbuf=4096)
        assert slow.status == 101
        assert slow.recv_json()["connections"] == 3
        # From here on, `slow` reads nothing until the server has evicted it.

        start = time.monotonic()
        sent = 0
        evicted = False
        while sent < MAX_MESSAGES and time.monotonic() - start < DEADLINE_SECS:
            sender.send_json({"type": "broadcast", "user": "s", "text": BIG_TEXT, "ref": str(sent)})
            sent += 1
            for who in (sender, healthy):
                got = who.recv_json()
                assert (got["seq"], got["ref"]) == (sent, str(sent - 1)), got
            # Checked after every broadcast, so `sent` is where the eviction happened.
            if slow_consumer_count(server) >= 1:
                evicted = True
                break
        assert evicted, f"slow reader not evicted after {sent} broadcasts"
        evicted_at = sent
        assert slow_consumer_count(server) == 1

        # Everyone else goes on receiving every broadcast, in order.
        for _ in range(20):
            sender.send_json({"type": "broadcast", "user": "s", "text": "after", "ref": str(sent)})
            sent += 1
            for who in (sender, healthy):
                got = who.recv_json()
                assert (got["seq"], got["ref"]) == (sent, str(sent - 1)), got
        healthy.assert_alive()

        # Now drain the slow reader: whatever broadcasts made it are a gap-free prefix, and if a
        # close frame made it out before the TCP connection ended, it says 1008.
        frames, ended = slow.wait_end(timeout=10)
        assert ended, "the evicted reader's TCP connection was not closed"
        seqs = [f.json()["seq"] for f in frames if f.opcode == OP_TEXT]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        assert len(seqs) < sent
        closes = [f for f in frames if f.opcode == OP_CLOSE]
        if closes:
            assert closes[0].close_code == 1008, closes[0]
            assert closes[0].close_reason == "slow consumer", closes[0]
            # A graceful close delivers everything already written to the socket, so what the
            # reader got plus what was queued (WS_SEND_QUEUE, give or take the message being
            # written and the one that overflowed) is what was broadcast before the eviction.
            gap = evicted_at - len(seqs)
            assert SEND_QUEUE - 1 <= gap <= SEND_QUEUE + 3, (
                f"evicted at broadcast {evicted_at} after delivering {len(seqs)}: "
                f"{gap} unwritten, but WS_SEND_QUEUE={SEND_QUEUE}"
            )
            # Sent counts what reached sockets: 3 welcomes, every broadcast to sender and healthy
            # reader, the one echo, and the slow reader's share; nothing it was never written.
            wait_for_sample(server, "ws_messages_sent_total", 3 + 2 * sent + 1 + len(seqs))
        # Not counted as anything else.
        for reason in ("abnormal", "send_failed", "protocol"):
            assert value_of(server, "ws_closed_conns_errors_total", reason=reason) == 0, reason
