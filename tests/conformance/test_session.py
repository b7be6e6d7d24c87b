"""PROTOCOL.md section 3: welcome, broadcast, echo, seq, reply shapes, Unicode counting."""

from __future__ import annotations

import json
import threading
import time

import pytest

from .support import MAX_SAFE_INT, Client, Clients, unique_room, wait_for_sample

REPLY_KEYS = {"type", "from", "user", "text", "ref", "sent_at", "seq", "server_ts"}


def now_ms() -> int:
    return int(time.time() * 1000)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def assert_reply_shape(reply: dict, kind: str, sender, sent: dict, t0: int, t1: int) -> None:
    """Every field of a broadcast/echo reply, with its JSON type."""
    assert set(reply) == REPLY_KEYS, f"reply keys {sorted(reply)}"
    assert reply["type"] == kind
    assert reply["from"] == sender.conn_id and isinstance(reply["from"], str)
    assert reply["user"] == sent["user"] and reply["text"] == sent["text"]
    assert reply["ref"] == sent.get("ref")
    assert reply["ref"] is None or isinstance(reply["ref"], str)
    assert reply["sent_at"] == sent.get("sent_at")
    assert reply["sent_at"] is None or is_int(reply["sent_at"])
    assert is_int(reply["seq"])
    assert is_int(reply["server_ts"])
    # Same machine, same clock: the server handled it between our send and our receive.
    assert t0 - 1000 <= reply["server_ts"] <= t1 + 1000, (t0, reply["server_ts"], t1)


# --- welcome ----------------------------------------------------------------------------------


def test_welcome_fields_and_server_name(server):
    room = unique_room()
    with Clients(server) as cs:
        w = cs.join(room).welcome
        assert set(w) == {"type", "conn_id", "room", "server", "connections"}
        assert w["type"] == "welcome"
        assert w["server"] == server.name
        assert w["room"] == room
        assert isinstance(w["conn_id"], str) and w["conn_id"].isdigit(), w["conn_id"]
        assert is_int(w["connections"]) and w["connections"] == 1


def test_conn_ids_are_unique(server):
    with Clients(server) as cs:
        ids = [cs.join(unique_room()).conn_id for _ in range(5)]
        for c in list(cs.opened):
            c.close()
        # new connections after closes, too
        ids += [cs.join().conn_id for _ in range(5)]
    assert len(set(ids)) == len(ids), ids


def test_concurrent_joins_get_unique_ids_and_counts(server):
    room, n = unique_room(), 20
    with Clients(server) as cs:
        results: list = []

        def join() -> None:
            try:
                results.append(Client(server, room))
            except BaseException as err:
                results.append(err)

        threads = [threading.Thread(target=join) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        cs.opened.extend(r for r in results if isinstance(r, Client))
        assert len(results) == n and all(isinstance(r, Client) for r in results), results
        assert len({c.conn_id for c in results}) == n
        counts = [c.welcome["connections"] for c in results]
        # Each sees itself and those that joined before it; whoever counted last sees all.
        assert all(1 <= c <= n for c in counts) and max(counts) == n, counts


def test_connections_counts_per_room(server):
    a_room, b_room = unique_room(), unique_room()
    with Clients(server) as cs:
        a1 = cs.join(a_room)
        assert cs.join(a_room).welcome["connections"] == 2
        assert cs.join(b_room).welcome["connections"] == 1
        assert cs.join(a_room).welcome["connections"] == 3
        a1.close()
        # The server handles the close on its own schedule: poll until the room shrank.
        wait_for_sample(server, "ws_connections", 3)
        assert cs.join(a_room).welcome["connections"] == 3


# --- broadcast --------------------------------------------------------------------------------


def test_broadcast_reaches_room_and_sender_only_with_exact_shape(server):
    room, other_room = unique_room(), unique_room()
    with Clients(server) as cs:
        a, b = cs.join(room), cs.join(room)
        outsider = cs.join(other_room)
        msg = {
            "type": "broadcast",
            "user": "ann",
            "text": "hi",
            "ref": "r1",
            "sent_at": 1732358400000,
        }
        t0 = now_ms()
        a.send_json(msg)
        got_a, got_b = a.recv_json(), b.recv_json()
        t1 = now_ms()
        for got in (got_a, got_b):
            assert_reply_shape(got, "broadcast", a, msg, t0, t1)
            assert got["seq"] == 1
        assert got_a == got_b
        # The outsider's next message is its own echo, not the other room's broadcast.
        outsider.assert_alive()


def test_broadcast_payload_is_identical_bytes_for_every_recipient(server):
    room = unique_room()
    with Clients(server) as cs:
        members = [cs.join(room) for _ in range(3)]
        members[1].send_json({"type": "broadcast", "user": "u", "text": "same bytes é 😀"})
        raws = [m.recv_raw() for m in members]
        assert raws[0] == raws[1] == raws[2]


def test_absent_and_null_ref_and_sent_at_come_back_null(server):
    room = unique_room()
    with Clients(server) as cs:
        a = cs.join(room)
        for msg in (
            {"type": "broadcast", "user": "u", "text": "t"},
            {
                "type": "broadcast",
                "user": "u",
                "text": "t",
                "ref": None,
                "sent_at": None,
            },
        ):
            t0 = now_ms()
            reply = a.request(msg)
            assert_reply_shape(reply, "broadcast", a, {"user": "u", "text": "t"}, t0, now_ms())
            assert reply["ref"] is None and reply["sent_at"] is None


def test_seq_counts_from_1_in_every_room_separately(server):
    r1, r2 = unique_room(), unique_room()
    with Clients(server) as cs:
        a, b = cs.join(r1), cs.join(r2)
        seqs_a = [
            a.request({"type": "broadcast", "user": "u", "text": str(i)})["seq"] for i in range(3)
        ]
        seqs_b = [
            b.request({"type": "broadcast", "user": "u", "text": str(i)})["seq"] for i in range(2)
        ]
        assert seqs_a == [1, 2, 3]
        assert seqs_b == [1, 2]


def test_concurrent_broadcasts_arrive_in_seq_order_at_every_member(server):
    room = unique_room()
    senders, per_sender = 3, 15
    total = senders * per_sender
    with Clients(server) as cs:
        members = [cs.join(room) for _ in range(senders)]
        errors: list[BaseException] = []

        def send_all(idx: int) -> None:
            try:
                for i in range(per_sender):
                    members[idx].send_json(
                        {"type": "broadcast", "user": f"s{idx}", "text": f"{idx}:{i}"}
                    )
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=send_all, args=(i,)) for i in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert not errors, errors
        streams = [[m.recv_json() for _ in range(total)] for m in members]
    for stream in streams:
        assert [r["seq"] for r in stream] == list(range(1, total + 1))
        # Each sender's own messages keep the order it sent them in.
        for idx in range(senders):
            mine = [r["text"] for r in stream if r["user"] == f"s{idx}"]
            assert mine == [f"{idx}:{i}" for i in range(per_sender)]
    assert streams[0] == streams[1] == streams[2]


def test_seq_restarts_at_1_when_room_is_recreated(server):
    room = unique_room()
    with Clients(server) as cs:
        a = cs.join(room)
        assert a.request({"type": "broadcast", "user": "u", "text": "1"})["seq"] == 1
        assert a.request({"type": "broadcast", "user": "u", "text": "2"})["seq"] == 2
        a.close()
        wait_for_sample(server, "ws_connections", 0)
        b = cs.join(room)
        assert b.welcome["connections"] == 1
        assert b.request({"type": "broadcast", "user": "u", "text": "3"})["seq"] == 1


# --- echo -------------------------------------------------------------------------------------


def test_echo_goes_to_sender_only_with_seq_0(server):
    room = unique_room()
    with Clients(server) as cs:
        a, b = cs.join(room), cs.join(room)
        msg = {"type": "echo", "user": "ann", "text": "hi", "ref": "r9", "sent_at": 5}
        t0 = now_ms()
        reply = a.request(msg)
        assert_reply_shape(reply, "echo", a, msg, t0, now_ms())
        assert reply["seq"] == 0
        # An echo does not consume the room's sequence, and b never saw the echo:
        # b's next message is the first broadcast, seq 1.
        a.send_json({"type": "broadcast", "user": "ann", "text": "after"})
        got = b.recv_json()
        assert (got["type"], got["text"], got["seq"]) == ("broadcast", "after", 1)


def test_unknown_fields_are_ignored(server):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        msg = {
            "type": "echo",
            "user": "u",
            "text": "t",
            "from": "spoofed",
            "seq": 99,
            "server_ts": 1,
            "extra": {"nested": [1, 2, None]},
        }
        reply = a.request(msg)
        assert reply["type"] == "echo"
        assert reply["from"] == a.conn_id and reply["seq"] == 0 and reply["server_ts"] != 1
        assert "extra" not in reply


# --- Unicode: characters are code points, not bytes ------------------------------------------


@pytest.mark.parametrize(
    "field,value,ok",
    [
        ("user", "é" * 32, True),
        ("user", "é" * 33, False),
        ("user", "😀" * 32, True),
        ("user", "😀" * 33, False),
        ("text", "é" * 4096, True),
        ("text", "é" * 4097, False),
        ("text", "😀" * 4096, True),
        ("text", "😀" * 4097, False),
        ("ref", "😀" * 64, True),
        ("ref", "😀" * 65, False),
    ],
)
@pytest.mark.parametrize("escaped", [False, True], ids=["utf8", "json-escaped"])
def test_unicode_lengths_count_code_points(server, field, value, ok, escaped):
    msg = {"type": "echo", "user": "u", "text": "t", field: value}
    with Clients(server) as cs:
        a = cs.join()
        # json-escaped sends "\u00e9" and surrogate pairs "\ud83d\ude00": still one character each.
        reply = a.request(json.dumps(msg, ensure_ascii=escaped))
        if ok:
            assert reply["type"] == "echo" and reply[field] == value, reply
        else:
            assert reply["type"] == "error" and reply["code"] == "invalid_message", reply
            assert reply["detail"].startswith(f"{field}: "), reply


@pytest.mark.parametrize("escaped", [False, True], ids=["utf8", "json-escaped"])
def test_text_needing_json_escapes_round_trips(server, escaped):
    text = 'q"b\\s/\n\t\r\x00\x1f\x7f\u2028\u2029</script>é😀\ufeff'
    room = unique_room()
    with Clients(server) as cs:
        a, b = cs.join(room), cs.join(room)
        msg = {"type": "broadcast", "user": "\x01\u2028", "text": text, "ref": "\\"}
        a.send_text(json.dumps(msg, ensure_ascii=escaped))
        for reply in (a.recv_json(), b.recv_json()):
            assert (reply["user"], reply["text"], reply["ref"]) == (msg["user"], text, "\\")


def test_sent_at_max_safe_integer_round_trips_exactly(server):
    with Clients(server) as cs:
        a = cs.join()
        reply = a.request({"type": "echo", "user": "u", "text": "t", "sent_at": MAX_SAFE_INT})
        assert reply["sent_at"] == MAX_SAFE_INT and is_int(reply["sent_at"])


def test_nothing_is_logged_per_message_at_info(server):
    with Clients(server) as cs:
        a = cs.join()
        a.assert_alive()
        time.sleep(0.2)
        before = len(server.log().splitlines())
        for i in range(50):
            assert a.request({"type": "echo", "user": "u", "text": str(i)})["type"] == "echo"
        time.sleep(0.2)
        after = len(server.log().splitlines())
    assert after - before < 10, f"{after - before} log lines for 50 messages"
