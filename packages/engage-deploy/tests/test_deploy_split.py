"""Split computing for real: a model's head on one host and its tail on another, the measured
latency against the placement model's prediction from measured figures
(``benchmarks/split_computing.py``), and the pieces alone: the cut, the tail's authentication and
bounds, measured entries in a placement problem."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
import torch

from engage.deploy.placement import PlacementProblem, PlacementProblemError
from engage.deploy.providers.netns import netns_available
from engage.deploy.serve.replica import ModelSpec
from engage.deploy.serve.split import (
    HeadClient,
    SplitError,
    SplitSpec,
    TailServer,
    issue_keys,
    link_figures,
    main,
    read_tail_keys,
)

SPEC = SplitSpec(ModelSpec("engage.deploy.serve.split:example_layers"), (4,), {"cloud": 0, "mid": 1, "late": 2})


@pytest.fixture
def keys(tmp_path):
    tail, head = issue_keys(tmp_path / "keys")
    return read_tail_keys(tail), json.loads(head.read_text())


@pytest.fixture
def tail(keys):
    server = TailServer(SPEC, "127.0.0.1", keys[0])
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(5)
    assert not thread.is_alive()
    server.close()


def test_every_cut_gives_the_whole_model_and_the_keys_are_private(tmp_path) -> None:
    full, parts = SPEC.build()
    x = SPEC.example(3)
    with torch.no_grad():
        for head, tail in parts.values():
            assert torch.equal(tail(head(x)), full(x))
    assert SPEC.tensor_bytes() == {"cloud": 16, "mid": 32, "late": 32}
    assert SplitSpec.from_json(SPEC.to_json()) == SPEC
    tail_file, head_file = issue_keys(tmp_path / "k")
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in (tail_file, head_file)} == {0o600}
    with pytest.raises(SplitError, match=r"splits.far: 7 is outside 0..2"):
        SplitSpec(SPEC.model, (4,), {"far": 7}).build()
    for bad, message in [
        ({"splits": {"mid": "1"}}, r"splits.mid: '1'; give an integer >= 0"),
        ({"splits": {}}, "splits: give at least one split point"),
        ({"input_shape": (4, 0)}, r"input_shape\[1\]: 0"),
        ({"dtype": "int8"}, "dtype: 'int8'; use one of float32"),
        ({"threads": 0}, "threads: 0"),
    ]:
        with pytest.raises(SplitError, match=message):
            SplitSpec(**{**SPEC.__dict__, **bad})
    with pytest.raises(SplitError, match="colour: not a split spec key"):
        SplitSpec.from_json(json.dumps({**json.loads(SPEC.to_json()), "colour": "red"}))
    with pytest.raises(SplitError, match="not JSON"):
        SplitSpec.from_json("{")


def test_the_tail_answers_its_key_only_and_refuses_what_it_was_not_declared(tail, keys) -> None:
    address = f"127.0.0.1:{tail.port}"
    client = HeadClient(SPEC, address, keys[1], timeout_s=10)
    try:
        result = client.measure("mid", requests=3, warmup=1)
        assert result["max_abs_error"] < 1e-6 and len(result["latency_s"]) == 3
        # an authenticated client sending a tensor of the wrong size, or naming no split: refused,
        # and the tail goes on serving
        client.parts["mid"] = (torch.nn.Identity(), client.parts["mid"][1])
        with pytest.raises(SplitError, match="tensor of 16 bytes; split mid takes 32"):
            client("mid", SPEC.example())
        client.parts["nowhere"] = client.parts["late"]
        with pytest.raises(SplitError, match="split 'nowhere' is not served here"):
            client("nowhere", SPEC.example())
        _, parts = SPEC.build()
        client.parts = parts
        assert client("late", SPEC.example()).output.shape == (1, 2)
    finally:
        client.close()
    assert tail.refused == 2
    # a client whose key the tail did not issue never gets an answer
    import zmq

    public, secret = zmq.curve_keypair()
    stranger = HeadClient(SPEC, address, {**keys[1], "public": public.decode(), "secret": secret.decode()}, 1.0)
    try:
        with pytest.raises(SplitError, match="no answer from the tail within 1 s"):
            stranger("mid", SPEC.example())
    finally:
        stranger.close()
    assert tail.served == 5  # 1 warm-up, 3 measured, 1 after the refusals


def test_nothing_a_client_sends_stops_the_tail(tail, keys) -> None:
    import zmq

    from engage.core.online.security import use_client_keys

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    use_client_keys(sock, keys[1])
    sock.connect(f"tcp://127.0.0.1:{tail.port}")
    try:
        for frames in (
            [b"[" * 3000, b""],  # nested past any parser's depth
            [b'{"id": 1, "split": []}', b""],  # a split that is not a name
            [b'{"id": true, "split": "mid"}', b""],
            [b"x"] * 50,  # many frames: read and dropped
            [b'{"id": 2, "split": "mid"}', b"\0" * 31],
        ):
            sock.send_multipart(frames)
            assert sock.poll(5000), frames[0][:30]
            reply = json.loads(sock.recv_multipart()[0])
            assert "error" in reply and reply["id"] in (-1, 1, 2), reply  # the id once the header is read
    finally:
        sock.close(0)
        context.term()
    assert tail.refused == 5 and tail.served == 0


def test_a_late_answer_is_dropped_and_the_next_one_taken(keys) -> None:
    # the tail is not serving yet: the head's request times out, its answer comes after
    server = TailServer(SPEC, "127.0.0.1", keys[0])
    slow = HeadClient(SPEC, f"127.0.0.1:{server.port}", keys[1], timeout_s=0.2)
    thread = threading.Thread(target=server.serve, daemon=True)
    try:
        with pytest.raises(SplitError, match=r"no answer from the tail within 0\.2 s"):
            slow("mid", SPEC.example())
        thread.start()
        slow.timeout_s = 10
        assert [slow("late", SPEC.example(i)).output.shape for i in range(3)] == [(1, 2)] * 3
        assert server.served == 4  # the late answer was sent, and dropped by the head
    finally:
        slow.close()
        server.stop()
        thread.join(5)
        server.close()


def test_a_tensor_of_the_largest_declared_size_crosses_curve(keys) -> None:
    # 16 KiB of input, above the header allowance: CURVE's framing must not push it over the limit
    wide = SplitSpec(ModelSpec("engage.deploy.serve.split:example_layers", {"inputs": 4096}), (4096,), {"cloud": 0})
    server = TailServer(wide, "127.0.0.1", keys[0])
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    client = HeadClient(wide, f"127.0.0.1:{server.port}", keys[1], timeout_s=10)
    try:
        assert client.measure("cloud", requests=2, warmup=0)["max_abs_error"] < 1e-5
    finally:
        client.close()
        server.stop()
        thread.join(5)
        server.close()


def test_bad_input_is_one_line(tmp_path, keys, capsys) -> None:
    with pytest.raises(SplitError, match="listens everywhere"):
        TailServer(SPEC, "0.0.0.0", keys[0])
    spec_path = tmp_path / "split.json"
    spec_path.write_text(SPEC.to_json())
    loose = tmp_path / "loose.keys"
    loose.write_text(json.dumps(keys[0]))
    loose.chmod(0o644)
    code = main(["tail", str(spec_path), "--keys", str(loose), "--bind", "127.0.0.1", "--port", "5999"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "readable by others" in err
    with pytest.raises(SplitError, match="listens everywhere"):
        TailServer(SPEC, "[::]", keys[0])
    tail_file, head_file = issue_keys(tmp_path / "k")
    argv = ["head", str(spec_path), "--keys", str(head_file), "--connect", "127.0.0.1:5999", "--split", "nowhere"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--split nowhere: not a split point of the spec; it has cloud, mid, late")
    assert main(["tail", str(spec_path), "--keys", str(tail_file), "--bind", "192.0.2.77", "--port", "5999"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bind/--port:" in err


def _problem(measured):
    return PlacementProblem.from_dict(
        {
            "nodes": [{"name": "cloud"}, {"name": "edge", "compute": 10.0, "memory": "1MiB"}],
            "links": [{"src": "edge", "dst": "cloud", "delay": "10ms", "rate": "8mbit"}],
            "models": [
                {
                    "name": "m",
                    "input": "100KB",
                    "variants": [
                        {
                            "name": "v",
                            "size": "1.5MB",
                            "accuracy": 0.9,
                            "gflop": 1.0,
                            "splits": [{"name": "s", "compute": 0.5, "tensor": "1KB"}],
                        }
                    ],
                }
            ],
            "requests": [{"node": "edge", "model": "m", "rate": 1.0}],
            "measured": measured,
        }
    )


def test_measured_figures_replace_nominal_ones_in_the_latency() -> None:
    nominal = {o.split: o.latency for o in _problem([]).classes[0].options}
    # head 0.5 GFLOP at 10 GFLOP/s = 50 ms; tail in the cloud (no compute figure) 0 s
    assert nominal["s"] == pytest.approx(0.05 + 0.02 + 8000 / 8e6)
    measured = [
        {"node": "edge", "model": "m", "variant": "v", "part": "head", "split": "s", "seconds": 0.002},
        {"node": "cloud", "model": "m", "variant": "v", "part": "tail", "split": "s", "seconds": 0.003},
        {"node": "cloud", "model": "m", "variant": "v", "seconds": 0.004},
    ]
    problem = _problem(measured)
    options = {o.split: o.latency for o in problem.classes[0].options}
    assert options["s"] == pytest.approx(0.002 + 0.02 + 8000 / 8e6 + 0.003)
    assert options[None] == pytest.approx(0.02 + 800_000 / 8e6 + 0.004)
    assert PlacementProblem.from_dict(problem.to_dict()).measured == problem.measured
    assert problem.with_changes(rates={("edge", "m"): 2.0}).measured == problem.measured


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"node": "fog", "model": "m", "variant": "v", "seconds": 1}, r"measured\[0\].node: 'fog' is not a node"),
        ({"node": "edge", "model": "m", "variant": "w", "seconds": 1}, r"measured\[0\].variant: 'w' is not a variant"),
        ({"node": "edge", "model": "m", "variant": "v", "part": "head", "split": "x", "seconds": 1}, r"split: 'x'"),
        ({"node": "edge", "model": "m", "variant": "v", "part": "body", "seconds": 1}, r"part: 'body'; use full"),
        ({"node": "edge", "model": "m", "variant": "v", "seconds": -1}, r"seconds: -1 is out of range"),
        ({"node": "edge", "model": "m", "variant": "v", "second": 1}, r"unknown key 'second'"),
    ],
)
def test_a_bad_measured_entry_is_one_line_naming_it(entry, message) -> None:
    with pytest.raises(PlacementProblemError, match=message):
        _problem([entry])


def test_link_figures_from_a_measurement() -> None:
    figures = link_figures(
        {"src": "edge-1", "dst": "cloud-1", "probe": {"rtt_median_ms": 20.4}, "stream": {"goodput_bps": 19.3e6}}
    )
    link = PlacementProblem.from_dict(
        {
            "nodes": [{"name": "cloud-1"}, {"name": "edge-1", "compute": 1.0}],
            "links": [figures],
            "models": [{"name": "m", "variants": [{"name": "v", "size": 1, "accuracy": 1, "gflop": 0}]}],
        }
    ).links["edge-1"]
    assert link.delay == pytest.approx(0.0102) and link.rate == pytest.approx(19.3e6)


_REASON = netns_available()


@pytest.mark.timing
@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
def test_split_computing_on_an_emulated_link_matches_its_prediction(load_script, tmp_path) -> None:
    """Head on edge-1, tail on cloud-1 over a 10 ms, 20 Mbit/s link: each way of serving within
    20% of the placement model's prediction from measured figures, ranked as predicted, the
    engine's choice the fastest measured, every answer equal to the whole model's. A measurement
    that misses runs once more (a shared machine's slow spells last seconds)."""
    bench = load_script("benchmarks/split_computing.py")

    def within(result: dict) -> bool:
        return all(0.8 <= row["measured_over_predicted"] <= 1.2 for row in result["rows"])

    result = bench.run(tmp_path / "first", requests=20)
    attempts = [result]
    if not within(result):
        result = bench.run(tmp_path / "second", requests=20)
        attempts.append(result)
    print(json.dumps([{"rows": r["rows"], "link": r["link"], "chosen": r["chosen"]} for r in attempts], indent=1))
    assert {row["option"] for row in result["rows"]} == {"cloud", "early", "late"}
    assert within(result), result["rows"]
    # the measured compute figures matter: nominal GFLOP/s alone predicts the late split's compute
    # (head and tail, as timed while serving) worse; compared on compute alone, since the link's
    # own noise is as large as the gap on the whole latency
    late = next(row for row in result["rows"] if row["option"] == "late")
    measured = late["compute_ms"]
    assert abs(late["predicted_compute_ms"] - measured) < abs(late["nominal_compute_ms"] - measured), late
    assert all(row["max_abs_error"] < 1e-4 for row in result["rows"])
    assert result["ranked_by_measurement"] == result["ranked_by_prediction"]
    assert result["chosen"] == result["ranked_by_measurement"][0] == "late"
