"""PROTOCOL.md section 4: the exported families, exactly, on a fresh server; and the two servers
against each other (that test starts one of each and needs both built)."""

from __future__ import annotations

import math

from harness import running_server

from .support import (
    BROKER_FAILURE_REASONS,
    BUCKETS,
    CONSTANT_ONE_FAMILIES,
    FAMILIES,
    OUTCOMES,
    REASONS,
    REQUIRED_PROCESS_FAMILIES,
    Family,
    default_node_id,
    le_value,
    parse_metrics,
    scrape,
)

# Families whose label values name the server and its build, so they differ between the twins by
# design (rust-ws may be a debug build while python-ws runs on a release CPython): only their label
# names are compared.
PER_SERVER_VALUES = ("ws_build_info",)
PROFILES = ("release", "debug")


def shape(fam: Family) -> dict:
    """What must match between servers: type, help, and per sample name its label sets
    (with `le` as a float, so "5e-06" and "0.000005" are the same bucket, and `node_id` left
    out: each process has its own)."""
    series = set()
    for sname, labels, _ in fam.samples:
        if fam.name in PER_SERVER_VALUES:
            series.add((sname, tuple(sorted(labels))))
            continue
        norm = tuple(
            sorted(
                (k, le_value(v) if k == "le" else v) for k, v in labels.items() if k != "node_id"
            )
        )
        series.add((sname, norm))
    return {"type": fam.type, "help": fam.help, "series": series}


def test_families_match_the_contract_on_a_fresh_server(server):
    fams = scrape(server)
    ws = {n: f for n, f in fams.items() if not n.startswith("process_")}
    assert sorted(ws) == sorted(FAMILIES), f"non-process families: {sorted(ws)}"
    for name, (type_, help_, label_names) in FAMILIES.items():
        fam = ws[name]
        assert fam.type == type_, (name, fam.type)
        assert fam.help == help_, (name, fam.help)
        if type_ == "histogram":
            buckets = [s for s in fam.samples if s[0] == name + "_bucket"]
            les = [le_value(labels["le"]) for _, labels, _ in buckets]
            assert les == [*BUCKETS, math.inf], (name, les)
            assert all(set(labels) == {"le"} for _, labels, _ in buckets)
            names = sorted({s[0] for s in fam.samples})
            assert names == sorted([name + "_bucket", name + "_count", name + "_sum"]), names
            assert all(v == 0 for _, _, v in fam.samples), (name, fam.samples)
        else:
            assert {s[0] for s in fam.samples} == {name}, (name, fam.samples)
            assert all(tuple(sorted(labels)) == label_names for _, labels, _ in fam.samples)
            start = 1 if name in CONSTANT_ONE_FAMILIES else 0
            assert all(v == start for _, _, v in fam.samples), (name, fam.samples)

    reasons = sorted(lab["reason"] for _, lab, _ in ws["ws_closed_conns_errors_total"].samples)
    assert reasons == sorted(REASONS)
    outcomes = sorted(lab["outcome"] for _, lab, _ in ws["ws_messages_received_total"].samples)
    assert outcomes == sorted(OUTCOMES)
    failures = ws["ws_broker_publish_failures_total"].samples
    assert sorted(lab["reason"] for _, lab, _ in failures) == sorted(BROKER_FAILURE_REASONS)
    assert len(ws["ws_connections"].samples) == 1
    # Without a broker: one node_info series saying so, with the default node id (§1).
    node_info = ws["ws_node_info"].samples
    expected = {"node_id": default_node_id(server.proc.pid), "broker": "none"}
    assert [labels for _, labels, _ in node_info] == [expected], node_info


def test_build_info_names_server_and_profile(server):
    """One ws_build_info series, = 1, naming this server and a build profile; the start-up line
    names the same profile, so a debug build is never benchmarked unnoticed."""
    samples = scrape(server)["ws_build_info"].samples
    assert len(samples) == 1, samples
    _, labels, value = samples[0]
    assert value == 1, samples
    assert labels["server"] == server.name, labels
    assert labels["profile"] in PROFILES, labels
    starts = [ln for ln in server.log().splitlines() if "listening on" in ln]
    assert len(starts) == 1, f"expected one start-up line:\n{server.log()}"
    named = [p for p in PROFILES if f"profile={p}" in starts[0]]
    assert named == [labels["profile"]], f"start-up line vs /metrics {labels}: {starts[0]}"


def test_process_families_present_and_nothing_else(server):
    fams = scrape(server)
    for name in REQUIRED_PROCESS_FAMILIES:
        assert name in fams and fams[name].samples, f"missing {name}"
        assert fams[name].type in ("counter", "gauge"), (name, fams[name].type)
    assert fams["process_resident_memory_bytes"].samples[0][2] > 0
    assert fams["process_open_fds"].samples[0][2] > 0
    for fam in fams.values():
        assert fam.type is not None and fam.help is not None, f"{fam.name} lacks TYPE or HELP"
        assert not fam.name.startswith("python_"), fam.name
        for sname, _, _ in fam.samples:
            assert not sname.endswith("_created"), sname


def test_metrics_identical_between_the_two_servers():
    """Starts one rust-ws and one python-ws and compares every non-process family exactly."""
    with running_server("rust") as rust, running_server("python") as python:
        r, p = scrape(rust), scrape(python)
    r_ws = {n: shape(f) for n, f in r.items() if not n.startswith("process_")}
    p_ws = {n: shape(f) for n, f in p.items() if not n.startswith("process_")}
    assert sorted(r_ws) == sorted(p_ws)
    for name, rust_shape in r_ws.items():
        assert rust_shape == p_ws[name], name
    for name in REQUIRED_PROCESS_FAMILIES:
        assert name in r and name in p, name
        assert r[name].type == p[name].type, (name, r[name].type, p[name].type)


def test_parser_reads_both_le_spellings():
    """The suite's own parser: the two client libraries print bucket bounds differently."""
    text = (
        "# HELP h A histogram.\n# TYPE h histogram\n"
        'h_bucket{le="5e-06"} 0\nh_bucket{le="0.000005"} 0\nh_bucket{le="+Inf"} 1\n'
        "h_sum 0.5\nh_count 1\n"
        '# HELP c Help with \\\\ and \\n.\n# TYPE c counter\nc{reason="a\\"b"} 2.0\n'
    )
    fams = parse_metrics(text)
    les = [le_value(lab["le"]) for _, lab, _ in fams["h"].samples[:3]]
    assert les == [0.000005, 0.000005, math.inf]
    assert fams["c"].help == "Help with \\ and \n."
    assert fams["c"].samples == [("c", {"reason": 'a"b'}, 2.0)]
