"""PROTOCOL.md §5, several nodes on one Redis: black-box, real processes only.

The cluster tests run on three topologies: two rust-ws nodes, two python-ws nodes, and one of
each (a room served by both kinds at once, which only works if both speak §5's wire format byte
for byte). What one process decides alone (its configuration, its own publish queue) runs once
per kind. The nodes are real server processes (`running_server` with WS_BROKER_URL and WS_NODE_ID),
the broker is Debian's redis-server on a free port (`running_redis`), the clients are real
WebSocket clients.

- `cluster` (module scope, one per topology): a Redis and two nodes shared by the tests that
  leave them as they found them; every such test uses rooms of its own (`unique_room`), so `seq`
  starts at 1 for each.
- The tests that kill, pause or withhold Redis, or end a node, start their own.

Timing bounds come from PROTOCOL §5: a node notices a broker that stays silent for 2 s and is
ready again within 3 s of Redis accepting connections. `SLACK` (1 s) is added to each bound for
what the test itself adds: polling /metrics and /readyz every 50 ms, scheduling on a 2-core
machine shared with other builds; it is not a tolerance for the servers. An echo or a pong
while Redis is paused must come within `PROMPT` (0.5 s), a quarter of the 2 s a stalled read
would take.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import (
    Redis,
    RespConn,
    Server,
    free_port,
    run_config_check,
    running_redis,
    running_server,
)

from .support import (
    BROKER_FAILURE_REASONS,
    FAMILIES,
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    Client,
    Clients,
    default_node_id,
    http_request,
    parse_metrics,
    sample,
    scrape,
    unique_room,
    value_of,
    wait_for,
)

TOPOLOGIES = [("rust", "rust"), ("python", "python"), ("rust", "python")]
TOPOLOGY_IDS = ["rust+rust", "python+python", "rust+python"]
NOTICE_BOUND = 2.0  # §5: a command unanswered for 2 s means the broker is down
RECOVERY_BOUND = 3.0  # §5: ready within 3 s of Redis accepting connections again
SLACK = 1.0  # polling and a loaded machine, see the module docstring
PROMPT = 0.5  # an echo or pong that takes longer than this was stalled by something
LIMIT = 65536  # the default WS_MAX_MESSAGE_BYTES


def node_env(redis_url: str, node_id: str) -> dict[str, str]:
    return {"WS_BROKER_URL": redis_url, "WS_NODE_ID": node_id}


def new_node_id(tag: str) -> str:
    """A node id using every kind of character §1 allows, unique per process started."""
    return f"{tag}_{uuid.uuid4().hex[:6]}.N-1"


@dataclass
class Cluster:
    redis: Redis
    nodes: list[Server]
    ids: list[str]


@contextlib.contextmanager
def running_nodes(redis_url: str, kinds: tuple[str, str]) -> Iterator[tuple[list, list]]:
    """Two nodes of the given kinds on one broker URL: yields (servers, node ids)."""
    ids = [new_node_id(f"{k}{i}") for i, k in enumerate(kinds)]
    with (
        running_server(kinds[0], node_env(redis_url, ids[0])) as a,
        running_server(kinds[1], node_env(redis_url, ids[1])) as b,
    ):
        yield [a, b], ids


@contextlib.contextmanager
def running_cluster(kinds: tuple[str, str], password: str | None = None) -> Iterator[Cluster]:
    with (
        running_redis(password=password) as redis,
        running_nodes(redis.url, kinds) as (nodes, ids),
    ):
        cluster = Cluster(redis, nodes, ids)
        wait_all_ready(cluster.nodes)
        yield cluster


@pytest.fixture(scope="module", params=TOPOLOGIES, ids=TOPOLOGY_IDS)
def topology(request) -> tuple[str, str]:
    return request.param


@pytest.fixture(scope="module")
def cluster(topology) -> Iterator[Cluster]:
    with running_cluster(topology) as c:
        yield c


# --- helpers ----------------------------------------------------------------------------------


def readyz(server) -> tuple[int, str]:
    status, _, body = http_request(server.port, "/readyz")
    return status, body


def broker_up(server) -> float:
    return value_of(server, "ws_broker_up")


def wait_all_ready(nodes, timeout: float = RECOVERY_BOUND + SLACK) -> None:
    ok = wait_for(lambda: all(readyz(n) == (200, "ready") for n in nodes), timeout)
    assert ok, f"not ready within {timeout}s: {[(n.name, readyz(n)) for n in nodes]}"


def wait_state(nodes, up: bool, timeout: float) -> float:
    """Wait until every node's /readyz and ws_broker_up say `up`; return when that happened
    (monotonic), failing after `timeout`."""
    want = (200, "ready") if up else (503, "broker unavailable")

    def reached() -> bool:
        return all(readyz(n) == want and broker_up(n) == (1 if up else 0) for n in nodes)

    ok = wait_for(reached, timeout, interval=0.05)
    seen = [(n.name, readyz(n), broker_up(n)) for n in nodes]
    assert ok, f"expected {want} and ws_broker_up {int(up)} within {timeout:.1f}s, got {seen}"
    return time.monotonic()


def broadcast(client: Client, text: str, ref: str | None = None) -> None:
    client.send_json({"type": "broadcast", "user": "u", "text": text, "ref": ref or text})


def recv_broadcast(client: Client, timeout: float = 5.0) -> dict:
    msg = client.recv_json(timeout)
    assert msg.get("type") == "broadcast", msg
    return msg


def assert_broker_unavailable(msg: dict, ref: str) -> None:
    assert msg.get("type") == "error" and msg.get("code") == "broker_unavailable", msg
    assert msg.get("ref") == ref, msg
    assert isinstance(msg.get("detail"), str) and msg["detail"], msg


def failures(server) -> dict[str, float]:
    fams = scrape(server)
    return {
        r: sample(fams, "ws_broker_publish_failures_total", reason=r)
        for r in BROKER_FAILURE_REASONS
    }


def echo_rtt(client: Client) -> float:
    marker = uuid.uuid4().hex
    t0 = time.monotonic()
    client.send_json({"type": "echo", "user": "u", "text": marker})
    while True:
        msg = client.recv_json(PROMPT * 4)
        if msg.get("type") == "echo" and msg.get("text") == marker:
            return time.monotonic() - t0


def ping_rtt(client: Client) -> float:
    t0 = time.monotonic()
    pong = client.ws.ping(uuid.uuid4().hex)
    assert pong.wait(PROMPT * 4), "no pong"
    return time.monotonic() - t0


def assert_cross_node_broadcast_works(members: list[Client], sender: Client, seq: int) -> None:
    """`sender` broadcasts once; every member gets exactly that, with `seq`."""
    ref = uuid.uuid4().hex
    broadcast(sender, "x-" + ref, ref)
    for m in members:
        got = recv_broadcast(m)
        assert (got["ref"], got["from"], got["seq"]) == (ref, sender.conn_id, seq), got


# --- every member, every node, exactly once; one sequence -------------------------------------


def test_cross_node_broadcast_reaches_every_member_once_with_one_seq(cluster):
    room = unique_room()
    a, b = cluster.nodes
    with Clients(a) as ca, Clients(b) as cb:
        members = [ca.join(room), ca.join(room), cb.join(room), cb.join(room)]
        broadcast(members[0], "first", "r1")
        texts = [m.recv_raw() for m in members]
        # The published text is what every member receives (§5 Payload): the same bytes on both
        # nodes, parsed by neither.
        assert len(set(texts)) == 1, texts
        first = json.loads(texts[0])
        assert first["type"] == "broadcast", first
        assert (first["from"], first["ref"], first["seq"]) == (members[0].conn_id, "r1", 1)
        assert (first["user"], first["text"], first["sent_at"]) == ("u", "first", None)
        # A second broadcast, from the other node, is the next message everywhere: nobody got
        # the first one twice.
        broadcast(members[3], "second", "r2")
        for m in members:
            got = recv_broadcast(m)
            assert (got["from"], got["ref"], got["seq"]) == (members[3].conn_id, "r2", 2), got


def test_concurrent_senders_on_both_nodes_one_gap_free_sequence(cluster):
    per_node, k = 3, 25
    room = unique_room()
    a, b = cluster.nodes
    with Clients(a) as ca, Clients(b) as cb:
        members = [ca.join(room) for _ in range(per_node)] + [
            cb.join(room) for _ in range(per_node)
        ]
        start = threading.Barrier(len(members))
        errors: list[BaseException] = []

        def send_all(m: Client) -> None:
            try:
                start.wait(5)
                for i in range(k):
                    broadcast(m, f"m{i}", f"{m.conn_id}/{i}")
            except BaseException as err:  # reported below, in the test's thread
                errors.append(err)

        threads = [threading.Thread(target=send_all, args=(m,)) for m in members]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors, errors
        total = len(members) * k
        seen = []
        for m in members:
            got = [recv_broadcast(m) for _ in range(total)]
            seqs = [g["seq"] for g in got]
            assert seqs == list(range(1, total + 1)), f"{m.conn_id} saw seq {seqs}"
            seen.append([(g["from"], g["ref"]) for g in got])
        assert all(s == seen[0] for s in seen), "members saw different orders"
        for m in members:
            own = [ref for frm, ref in seen[0] if frm == m.conn_id]
            assert own == [f"{m.conn_id}/{i}" for i in range(k)], own


def test_one_members_broadcasts_keep_their_order(cluster):
    """§5 Ordering: broadcasts from one member keep their order, and a node publishes in the order
    its members' messages were handled, even with many publishes in flight at once."""
    n = 1000  # under WS_SEND_QUEUE (1024): nobody reads until all are sent
    room = unique_room()
    a, b = cluster.nodes
    with Clients(a) as ca, Clients(b) as cb:
        sender, other = ca.join(room), cb.join(room)
        for i in range(n):
            broadcast(sender, "o", str(i))
        for m in (sender, other):
            got = [recv_broadcast(m) for _ in range(n)]
            refs = [int(g["ref"]) for g in got]
            out_of_order = [(i, refs[i - 1], refs[i]) for i in range(1, n) if refs[i] < refs[i - 1]]
            assert out_of_order == [], f"{m.conn_id}: (index, previous ref, ref) {out_of_order[:5]}"
            assert [g["seq"] for g in got] == list(range(1, n + 1))


def test_conn_ids_are_node_scoped_and_welcome_counts_this_node_only(cluster):
    room = unique_room()
    a, b = cluster.nodes
    with Clients(a) as ca, Clients(b) as cb:
        a1 = ca.join(room)
        b1 = cb.join(room)
        a2 = ca.join(room)
        b2 = cb.join(room)
        b3 = cb.join(room)
        assert [c.welcome["connections"] for c in (a1, b1, a2, b2, b3)] == [1, 1, 2, 2, 3]
        assert [c.welcome["server"] for c in (a1, b1)] == [a.name, b.name]
        on_a = [(c, cluster.ids[0]) for c in (a1, a2)]
        on_b = [(c, cluster.ids[1]) for c in (b1, b2, b3)]
        for c, node_id in on_a + on_b:
            assert re.fullmatch(re.escape(node_id) + r":[0-9]+", c.conn_id), c.conn_id
        ids = [c.conn_id for c in (a1, b1, a2, b2, b3)]
        assert len(set(ids)) == len(ids), ids


# --- the wire format in Redis (§5), seen from Redis's side ---------------------------------------

SCRIPT = (
    "local seq = redis.call('INCR', KEYS[1])\n"
    "redis.call('EXPIRE', KEYS[1], 3600)\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[1] .. seq .. ARGV[2])\n"
    "return seq\n"
)  # PROTOCOL §5's block, each line ending in a newline


def test_wire_format_as_redis_sees_it(cluster):
    """The keys, channel, payload, script and subscriptions of §5, read from Redis itself: two
    kinds of node that agreed with each other on a wrong format would pass every other test."""
    redis = cluster.redis
    a, b = cluster.nodes
    sha = hashlib.sha1(SCRIPT.encode()).hexdigest()
    unterminated = hashlib.sha1(SCRIPT.rstrip("\n").encode()).hexdigest()
    room = unique_room()
    with contextlib.closing(redis.connect()) as sub, Clients(a) as ca, Clients(b) as cb:
        members = [ca.join(room), cb.join(room)]
        # One pattern subscription per node, no per-room subscription, nothing else.
        clients = [
            dict(kv.split("=", 1) for kv in line.split())
            for line in redis.call("CLIENT", "LIST").decode().splitlines()
        ]
        psubs = sorted(int(c["psub"]) for c in clients if c["psub"] != "0")
        assert psubs == [1, 1], clients
        assert all(c["sub"] == "0" for c in clients), clients
        # Both nodes loaded the same script, PROTOCOL's text byte for byte.
        assert redis.call("SCRIPT", "EXISTS", sha, unterminated) == [1, 0]

        assert sub.call("PSUBSCRIBE", "wslab:room:*") == [b"psubscribe", b"wslab:room:*", 1]
        for seq, sender in enumerate(members, start=1):
            broadcast(sender, f"wire{seq}")
            texts = [m.recv_raw() for m in members]
            assert texts[0] == texts[1], texts
            assert json.loads(texts[0])["seq"] == seq
            channel = f"wslab:room:{room}".encode()
            assert sub.read() == [b"pmessage", b"wslab:room:*", channel, texts[0].encode()]
        assert redis.call("GET", f"wslab:seq:{room}") == b"2"
        assert 3590 <= redis.call("TTL", f"wslab:seq:{room}") <= 3600
        keys = redis.call("KEYS", "*")
        assert all(k.startswith(b"wslab:seq:") for k in keys), keys  # nothing per node

        # A flushed script cache: each node answers NOSCRIPT with EVAL of the same text.
        redis.call("SCRIPT", "FLUSH")
        for seq, sender in enumerate(members, start=3):
            broadcast(sender, f"wire{seq}")
            for m in members:
                got = recv_broadcast(m)
                assert (got["from"], got["seq"]) == (sender.conn_id, seq), got
            assert sub.read()[2] == channel
        assert redis.call("SCRIPT", "EXISTS", sha, unterminated) == [1, 0]


# --- HTTP and metrics --------------------------------------------------------------------------


def test_ready_healthy_and_the_broker_families(cluster):
    for node, node_id in zip(cluster.nodes, cluster.ids, strict=True):
        assert readyz(node) == (200, "ready")
        status, _, body = http_request(node.port, "/healthz")
        assert (status, body) == (200, "ok")
        status, _, body = http_request(node.port, "/readyz", method="HEAD")
        assert (status, body) == (200, "")
        fams = scrape(node)
        ws = sorted(n for n in fams if not n.startswith("process_"))
        assert ws == sorted(FAMILIES), ws
        for name, (type_, help_, _) in FAMILIES.items():
            assert (fams[name].type, fams[name].help) == (type_, help_), name
        info = fams["ws_node_info"].samples
        assert info == [("ws_node_info", {"node_id": node_id, "broker": "redis"}, 1.0)], info
        assert sample(fams, "ws_broker_up") == 1


def test_broker_counters_move_as_section_4_says(cluster):
    a, b = cluster.nodes
    names = (
        "ws_broker_published_total",
        "ws_broker_received_total",
        "ws_broker_publish_duration_seconds_count",
        "ws_broadcast_duration_seconds_count",
    )

    def values(node) -> dict[str, float]:
        fams = scrape(node)
        return {n: sample(fams, n) for n in names} | failures(node)

    before = [values(a), values(b)]
    n = 3
    room = unique_room()
    with Clients(a) as ca, Clients(b) as cb:
        sender, other = ca.join(room), cb.join(room)
        for i in range(n):
            broadcast(sender, f"c{i}")
        for m in (sender, other):
            assert [recv_broadcast(m)["seq"] for _ in range(n)] == list(range(1, n + 1))
        # A room with members on node A only: node B still receives it (one pattern
        # subscription), but has nobody to fan it out to.
        lonely = ca.join(unique_room())
        broadcast(lonely, "alone")
        assert recv_broadcast(lonely)["seq"] == 1

    expected_a = {
        "ws_broker_published_total": n + 1,
        "ws_broker_received_total": n + 1,
        "ws_broker_publish_duration_seconds_count": n + 1,
        "ws_broadcast_duration_seconds_count": n + 1,
    }
    expected_b = {
        "ws_broker_published_total": 0,
        "ws_broker_received_total": n + 1,
        "ws_broker_publish_duration_seconds_count": 0,
        "ws_broadcast_duration_seconds_count": n,  # the lonely room has no member on B
    }
    for node, was, expected in ((a, before[0], expected_a), (b, before[1], expected_b)):
        expected = expected | dict.fromkeys(BROKER_FAILURE_REASONS, 0)

        def deltas(node=node, was=was) -> dict[str, float]:
            now = values(node)
            return {k: now[k] - was[k] for k in now}

        got = wait_for(lambda node=node, expected=expected, d=deltas: d() == expected)
        assert got, f"{node.name}: deltas {deltas()}, expected {expected}"


# --- hostile input on a node with a broker ------------------------------------------------------


def test_hostile_input_on_a_broker_node_does_not_disturb_the_room(cluster):
    room = unique_room()
    a, b = cluster.nodes
    with Clients(a) as ca, Clients(b) as cb:
        watchers = [ca.join(room), cb.join(room)]
        for node, cs in ((a, ca), (b, cb)):
            bad = cs.join(room)
            assert bad.request("{not json")["code"] == "invalid_json"
            bad.ws.send(b'{"type":"broadcast","user":"u","text":"t"}')
            assert bad.recv_json()["code"] == "binary_unsupported"
            bad.assert_alive()
            bad.send_refused("x" * (LIMIT + 1))
            assert bad.wait_closed_by_server() == []
            assert bad.close_rcvd_code == 1009, node.name
            raw = cs.raw(f"/ws?room={room}")
            assert raw.recv_json()["type"] == "welcome"
            raw.send_frame(OP_TEXT, b'{"type":"echo","user":"u","text":"t"}')
            assert raw.recv_json()["type"] == "echo"
            raw.send_frame(OP_BINARY, b"\x00\xff")
            assert raw.recv_json()["code"] == "binary_unsupported"
            raw.send_frame(OP_CLOSE, (1005).to_bytes(2, "big"))
            frames, ended = raw.wait_end()
            assert [f.close_code for f in frames if f.opcode == OP_CLOSE] == [1002], frames
            assert ended
        # None of that reached the watchers: their next message is this broadcast, seq 1.
        assert_cross_node_broadcast_works(watchers, watchers[1], 1)
        for w in watchers:
            w.assert_alive()


# --- the broker going away and coming back --------------------------------------------------------


def test_redis_killed_and_restarted(topology):
    with running_cluster(topology) as c:
        a, b = c.nodes
        pids = [n.proc.pid for n in c.nodes]
        room = unique_room()
        with Clients(a) as ca, Clients(b) as cb:
            ma, mb = ca.join(room), cb.join(room)
            assert_cross_node_broadcast_works([ma, mb], ma, 1)
            assert_cross_node_broadcast_works([ma, mb], mb, 2)

            c.redis.kill()  # SIGKILL: its connections end at once, so a node sees EOF at once
            wait_state(c.nodes, up=False, timeout=NOTICE_BOUND + SLACK)
            before = [failures(n) for n in c.nodes]
            for m in (ma, mb):
                broadcast(m, "in the gap", "gap-" + m.conn_id)
                assert_broker_unavailable(m.recv_json(PROMPT * 4), "gap-" + m.conn_id)
                m.assert_alive()
            # Local work goes on: a newcomer is welcomed and echoed.
            ca.join(room).assert_alive()
            cb.join(room).assert_alive()
            for node, was in zip(c.nodes, before, strict=True):
                now = failures(node)
                assert now["unavailable"] == was["unavailable"] + 1, (node.name, was, now)
                assert (now["lost"], now["overloaded"]) == (was["lost"], was["overloaded"])

            accepted = c.redis.start()
            done = wait_state(c.nodes, up=True, timeout=RECOVERY_BOUND + SLACK)
            assert done - accepted <= RECOVERY_BOUND + SLACK
            assert [n.proc.poll() for n in c.nodes] == [None, None], "a node exited"
            assert [n.proc.pid for n in c.nodes] == pids
            # Redis came back empty: the room's sequence starts again at 1 (§5).
            assert_cross_node_broadcast_works([ma, mb], mb, 1)
            assert_cross_node_broadcast_works([ma, mb], ma, 2)


def test_redis_paused_does_not_stall_local_work(topology):
    with running_cluster(topology) as c:
        a, b = c.nodes
        room = unique_room()
        with Clients(a) as ca, Clients(b) as cb:
            ma, mb = ca.join(room), cb.join(room)
            assert_cross_node_broadcast_works([ma, mb], ma, 1)
            echoers = [ca.join(), cb.join()]

            c.redis.pause()
            paused = time.monotonic()
            # A publish waits on each node from the first moment, so each must give up on the
            # broker 2 s from now (§5: a command unanswered for 2 s).
            refs = {}
            for m in (ma, mb):
                refs[m.conn_id] = f"paused-{m.conn_id}"
                broadcast(m, "paused", refs[m.conn_id])
            slowest = 0.0
            down_at = None
            try:
                while time.monotonic() - paused < 3.0 or down_at is None:
                    for e in echoers:
                        slowest = max(slowest, echo_rtt(e), ping_rtt(e))
                    if down_at is None and all(
                        readyz(n) == (503, "broker unavailable") for n in c.nodes
                    ):
                        down_at = time.monotonic()
                    assert time.monotonic() - paused < NOTICE_BOUND + SLACK + 1.0, (
                        f"not both not-ready within {NOTICE_BOUND + SLACK}s: "
                        f"{[(n.name, readyz(n)) for n in c.nodes]}"
                    )
                    time.sleep(0.05)
                # A broadcast while the node knows the broker is gone: answered at once.
                for m in (ma, mb):
                    broadcast(m, "still paused", "late-" + m.conn_id)
            finally:
                c.redis.resume()
            resumed = time.monotonic()
            assert down_at - paused <= NOTICE_BOUND + SLACK, down_at - paused
            assert slowest < PROMPT, f"an echo or ping took {slowest:.3f}s while Redis was paused"
            for m in (ma, mb):
                got = [m.recv_json(NOTICE_BOUND + SLACK) for _ in range(2)]
                assert_broker_unavailable(got[0], refs[m.conn_id])
                assert_broker_unavailable(got[1], "late-" + m.conn_id)
            for node in c.nodes:
                # The first was sent and never answered (`lost`), or found the node already not
                # ready (`unavailable`); the second came while the node knew (`unavailable`).
                def counted(node=node) -> bool:
                    now = failures(node)
                    return now["lost"] + now["unavailable"] == 2

                wait_for(counted)
                now = failures(node)
                assert now["overloaded"] == 0 and now["unavailable"] >= 1, (node.name, now)
                assert now["lost"] + now["unavailable"] == 2, (node.name, now)
            done = wait_state(c.nodes, up=True, timeout=RECOVERY_BOUND + SLACK)
            assert done - resumed <= RECOVERY_BOUND + SLACK
            # The paused broadcasts may or may not have been delivered (`lost`); what a member
            # sees next is in one order on both nodes and ends with the new one.
            ref = "after-" + uuid.uuid4().hex
            broadcast(mb, "after", ref)
            seen = []
            for m in (ma, mb):
                got = [recv_broadcast(m)]
                while got[-1]["ref"] != ref:
                    assert got[-1]["ref"] in refs.values(), got[-1]
                    got.append(recv_broadcast(m))
                seqs = [g["seq"] for g in got]
                assert seqs == sorted(set(seqs)) and seqs[0] >= 2, seqs
                seen.append([(g["ref"], g["seq"]) for g in got])
            assert seen[0][-1] == seen[1][-1], seen


def test_publish_queue_is_bounded(kind):
    """§5 Pipelining: at most 4096 publishes per node wait for the broker; a broadcast that finds
    the queue full is answered broker_unavailable at once (`overloaded`). With Redis paused,
    nothing is answered, so the first 4096 wait (and are `lost` when the node gives up) and the
    rest overflow. One node is enough: the queue is each node's own. Its WS_SEND_QUEUE is raised
    so that the 4096 `lost` answers, which come at once, do not evict the member as a slow
    consumer (§3)."""
    bound, extra = 4096, 400
    env = node_env("", new_node_id(kind)) | {"WS_SEND_QUEUE": str(2 * (bound + extra))}
    with (
        running_redis() as redis,
        running_server(kind, env | {"WS_BROKER_URL": redis.url}) as node,
        Clients(node) as cs,
    ):
        wait_all_ready([node])
        member = cs.join(unique_room(), max_queue=None)  # reads every error as it comes
        texts = [
            json.dumps({"type": "broadcast", "user": "u", "text": "q", "ref": str(i)})
            for i in range(bound + extra)
        ]
        redis.pause()
        try:
            for text in texts:
                member.send_text(text)
            errors = [member.recv_json(NOTICE_BOUND + SLACK) for _ in texts]
        finally:
            redis.resume()
        for e in errors:
            assert (e.get("type"), e.get("code")) == ("error", "broker_unavailable"), e
        assert sorted(int(e["ref"]) for e in errors) == list(range(bound + extra))
        counts = failures(node)
        assert counts["lost"] == bound, counts
        assert counts["overloaded"] >= 1, counts
        assert sum(counts.values()) == bound + extra, counts
        wait_state([node], up=True, timeout=RECOVERY_BOUND + SLACK)
        member.assert_alive()


def test_node_started_without_redis_serves_and_becomes_ready(topology):
    port = free_port()
    url = f"redis://127.0.0.1:{port}"  # no database: 0 by default
    with running_nodes(url, topology) as (nodes, _):
        for node in nodes:
            assert http_request(node.port, "/healthz")[0] == 200
            assert readyz(node) == (503, "broker unavailable")
            assert broker_up(node) == 0
        room = unique_room()
        with Clients(nodes[0]) as ca, Clients(nodes[1]) as cb:
            members = [ca.join(room), cb.join(room)]
            for node, m in zip(nodes, members, strict=True):
                m.assert_alive()
                was = failures(node)
                broadcast(m, "nobody", "r-" + m.conn_id)
                assert_broker_unavailable(m.recv_json(PROMPT * 4), "r-" + m.conn_id)
                assert failures(node) == was | {"unavailable": was["unavailable"] + 1}
            with running_redis(port=port) as redis:
                done = wait_state(nodes, up=True, timeout=RECOVERY_BOUND + SLACK)
                assert done - redis.accepted_at <= RECOVERY_BOUND + SLACK
                assert_cross_node_broadcast_works(members, members[0], 1)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_node_gone_leaves_the_others_talking(topology, how):
    """§5 A node killed: the other node's members keep talking without a pause. §5 What stays
    per node: SIGTERM closes the node's own members with 1001, and it exits 0 (§3 Shutdown)."""
    with running_cluster(topology) as c:
        a, b = c.nodes
        room = unique_room()
        with Clients(a) as ca, Clients(b) as cb:
            ma, b1, b2 = ca.join(room), cb.join(room), cb.join(room)
            assert_cross_node_broadcast_works([ma, b1, b2], ma, 1)
            if how == "SIGKILL":
                a.proc.kill()
                a.proc.wait()
            else:
                t0 = time.monotonic()
                a.proc.send_signal(signal.SIGTERM)
                assert ma.wait_closed_by_server() == []
                assert ma.close_rcvd_code == 1001
                assert a.proc.wait(timeout=8) == 0
                assert time.monotonic() - t0 < 6.5
            before = failures(b)
            t0 = time.monotonic()
            seq = 2
            while time.monotonic() - t0 < 1.0:
                assert broker_up(b) == 1
                assert_cross_node_broadcast_works([b1, b2], b1, seq)
                seq += 1
            assert failures(b) == before
            assert readyz(b) == (200, "ready")


# --- configuration -------------------------------------------------------------------------------

BAD_URLS = ["http://x", "redis://", "redis://:pw@", "redis://h:99999", "redis://h/x"]


@pytest.mark.parametrize("value", BAD_URLS)
def test_invalid_broker_url_exits_2_naming_the_variable(kind, value):
    result = run_config_check(kind, {"WS_BROKER_URL": value})
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "WS_BROKER_URL" in lines[0], lines[0]
    if ":pw@" in value:
        assert ":pw@" not in lines[0] and "***" in lines[0], lines[0]
    else:
        assert value in lines[0], lines[0]


def test_invalid_broker_url_never_shows_its_password(kind):
    result = run_config_check(kind, {"WS_BROKER_URL": "redis://:s3cretpw@h:99999"})
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "WS_BROKER_URL" in lines[0], lines
    assert "s3cretpw" not in result.stderr + result.stdout
    assert "***" in lines[0], lines[0]


@pytest.mark.parametrize(
    "value", ["a b", "n" * 33, "a:b", "nöde"], ids=["space", "33", "colon", "non-ascii"]
)
def test_invalid_node_id_exits_2(kind, value):
    result = run_config_check(kind, {"WS_NODE_ID": value})
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "WS_NODE_ID" in lines[0], lines


def test_empty_node_id_is_unset_and_32_characters_are_allowed(kind):
    """The default id (§1) ends with the process id; 32 characters of the allowed set pass."""
    long_id = "Az09_.-" * 4 + "abcd"
    assert len(long_id) == 32
    with (
        running_redis() as redis,
        running_server(kind, node_env(redis.url, "")) as dflt,
        running_server(kind, node_env(redis.url, long_id)) as named,
        Clients(dflt) as cd,
        Clients(named) as cn,
    ):
        wait_all_ready([dflt, named])
        conn_id = cd.join().conn_id
        assert re.fullmatch(re.escape(default_node_id(dflt.proc.pid)) + r":[0-9]+", conn_id)
        assert re.fullmatch(re.escape(long_id) + r":[0-9]+", cn.join().conn_id)
        info = scrape(dflt)["ws_node_info"].samples
        assert info[0][1]["node_id"] == conn_id.split(":")[0], info


def test_password_works_and_is_never_shown(topology):
    """Redis with --requirepass: the nodes connect with the password; it appears in no log line,
    no metric, no client message, through a broker loss and a failed re-authentication."""
    secret = "s3cretpw"
    with running_cluster(topology, password=secret) as c:
        a, b = c.nodes
        room = unique_room()
        seen: list[str] = []
        with Clients(a) as ca, Clients(b) as cb:
            ma, mb = ca.join(room), cb.join(room)
            seen += [json.dumps(m.welcome) for m in (ma, mb)]
            ref = "pw"
            broadcast(ma, "hello", ref)
            for m in (ma, mb):
                seen.append(m.recv_raw())
            c.redis.kill()
            wait_state(c.nodes, up=False, timeout=NOTICE_BOUND + SLACK)
            broadcast(ma, "gap", "gap")
            seen.append(ma.recv_raw())
            assert_broker_unavailable(json.loads(seen[-1]), "gap")
            # Back with another password: every reconnection fails to authenticate.
            c.redis.start(password="other-pw")
            with contextlib.closing(RespConn(c.redis.port)) as admin:
                admin.call("AUTH", "other-pw")
                # Redis logs each refused AUTH (ACL LOG): the nodes did try, with the old one.
                tried = wait_for(lambda: admin.call("ACL", "LOG"), RECOVERY_BOUND + SLACK)
                assert tried, "no node tried to authenticate against the restarted Redis"
            assert [readyz(n)[0] for n in c.nodes] == [503, 503]
            broadcast(mb, "still", "still")
            seen.append(mb.recv_raw())
            assert_broker_unavailable(json.loads(seen[-1]), "still")
            c.redis.kill()
            c.redis.start()
            wait_state(c.nodes, up=True, timeout=RECOVERY_BOUND + SLACK)
            for node in c.nodes:
                for path in ("/metrics", "/readyz", "/healthz"):
                    seen.append(http_request(node.port, path)[2])
        for node, node_id in zip(c.nodes, c.ids, strict=True):
            log = node.log()
            assert secret not in log, f"{node.name} logged the password:\n{log}"
            redacted = f"redis://:***@127.0.0.1:{c.redis.port}/0"
            start_lines = [ln for ln in log.splitlines() if node_id in ln and redacted in ln]
            assert start_lines, (
                f"{node.name}: no start-up line with {node_id} and {redacted}:\n{log}"
            )
        leaks = [s for s in seen if secret in s]
        assert leaks == [], leaks
        parse_metrics(seen[-3])  # the /metrics text collected above is well formed
