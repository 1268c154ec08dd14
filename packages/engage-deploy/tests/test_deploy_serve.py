"""Serving a model while it trains: an ``engage serve`` replica takes each version the
``PublishWeights`` callback sends, answers with the version behind each answer, refuses requests
without its key and weights that do not fit, and is started again when it dies."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from engage.deploy.callbacks import PublishWeights
from engage.deploy.serve.load import RequestGenerator
from engage.deploy.serve.weights import serialize

pytest.importorskip("litserve")
pytestmark = pytest.mark.slow

APPS = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS))
from serve_app import Sine, loader, truth  # noqa: E402

ENGAGE = [sys.executable, "-m", "engage.core.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(rng: np.random.Generator) -> tuple[list, np.ndarray]:
    x = rng.uniform(-1, 1, size=(4, 1))
    return [x.tolist()], truth(torch.as_tensor(x)).numpy()


def post(url: str, path: str, body: dict, key: str) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data, headers), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Replica:
    """``engage serve`` running the Sine model in its own process."""

    def __init__(self, root: Path) -> None:
        self.key_file = root / "serve.key"
        self.key_file.write_text(secrets.token_urlsafe(32))
        self.key_file.chmod(0o600)
        self.key = self.key_file.read_text()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = root / "replica"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [*ENGAGE, "serve", "--model", "serve_app:Sine", "--api-key-file", str(self.key_file),
             "--port", str(self.port), "--name", "fog-1", "--folder", str(self.folder)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.process.stdout.readline()  # once the replica answers
        assert "serving serve_app:Sine at" in line, line + self.process.stderr.read()

    def status(self) -> dict:
        return json.loads((self.folder / "status.json").read_text())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    started = Replica(tmp_path_factory.mktemp("serve"))
    yield started
    assert started.stop() == 0
    # the replica went with its supervisor
    assert started.status()["pid"] and not _alive(started.status()["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_a_replica_serves_each_version_while_the_model_trains(replica: Replica, tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = PublishWeights([replica.url], api_key_file=replica.key_file, every_n_steps=40)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="serve", tracking_uri=uri)
    trainer = pl.Trainer(
        max_steps=320, callbacks=[callback], logger=logger, log_every_n_steps=20,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    generator = RequestGenerator({"edge-1": (replica.url, 25.0)}, request, api_key=replica.key, seed=3)
    stop = threading.Event()
    requests = threading.Thread(target=generator.run, args=(120.0, stop))
    requests.start()
    try:
        trainer.fit(Sine(), loader())
        time.sleep(0.5)  # answers of the last version too
    finally:
        stop.set()
        requests.join(60)
    published = [p.version for p in callback.publications]
    assert published[:2] == [40, 80] and published[-1] == 320 and callback.failures == 0
    assert all(p.status == 200 for p in callback.publications)
    summary = generator.summary()
    print(json.dumps(summary))
    assert summary["requests"] >= 20 and summary["failed"] == 0, summary
    # every answer says how long the replica took, never more than the client waited
    assert all(r.service_s is not None and 0 < r.service_s <= r.latency_s for r in generator.results)
    errors = summary["error_by_version"]
    versions = sorted(errors)
    # the answers followed training: several versions served, the last one far better than the first
    assert len(versions) >= 3 and versions[-1] == 320, versions
    assert errors[versions[-1]] < 0.3 * errors[versions[0]], errors
    # each answer names the version that computed it: a request now gets the last one
    status, answer = post(replica.url, "/predict", {"inputs": [[[0.5]]]}, replica.key)
    assert status == 200 and answer["version"] == 320 and answer["replica"] == "fog-1"
    assert answer["run"] == callback.run_id  # and the training it comes from
    assert abs(answer["outputs"][0][0] - float(np.sin(1.5))) < 0.1
    # figures over time in MLflow: latency, error and version per second, and the plot
    generator.log_to_mlflow(logger.run_id, uri)
    client = MlflowClient(uri)
    history = client.get_metric_history(logger.run_id, "serve/model_version")
    seconds = {int(r.due_s) for r in generator.results if r.ok}
    assert [m.value for m in history][-1] == 320 and [m.step for m in history] == sorted(seconds)
    # the per-second median latency is a series of the seconds alone; the whole run's is its own
    latency = client.get_metric_history(logger.run_id, "serve/latency_ms_p50")
    assert [m.step for m in latency] == sorted(seconds)
    summary = generator.summary()
    (whole,) = client.get_metric_history(logger.run_id, "serve/run/latency_ms_p50")
    assert whole.value == pytest.approx(summary["latency_ms_p50"])
    assert client.get_metric_history(logger.run_id, "serve/run/requests")[0].value == summary["requests"]
    assert client.get_metric_history(logger.run_id, "serve/published_version")[-1].value == 320
    assert {a.path for a in client.list_artifacts(logger.run_id, "serve")} == {
        "serve/requests.json",
        "serve/serving.png",
    }


def test_keys_stale_versions_and_weights_that_do_not_fit_are_refused(replica: Replica) -> None:
    weights = {"version": 10**9, "state_dict": base64.b64encode(serialize(Sine().state_dict())).decode()}
    assert post(replica.url, "/predict", {"inputs": [[[0.1]]]}, "not-the-key")[0] == 401
    assert post(replica.url, "/weights", weights, "not-the-key")[0] == 401
    current = post(replica.url, "/predict", {"inputs": [[[0.1]]]}, replica.key)[1]["version"]
    stale = {**weights, "version": current}
    status, answer = post(replica.url, "/weights", stale, replica.key)
    assert status == 409 and "not newer" in answer["detail"]
    other = {**weights, "state_dict": base64.b64encode(serialize(Sine(width=8).state_dict())).decode()}
    status, answer = post(replica.url, "/weights", other, replica.key)
    assert status == 400 and "do not fit the model" in answer["detail"]
    code = "import os\nclass A:\n    def __reduce__(self):\n        return (os.system, ('true',))\n"
    namespace: dict = {}
    exec(code, namespace)  # a payload that would run code when unpickled without weights_only
    import io

    buffer = io.BytesIO()
    torch.save({"net.0.weight": namespace["A"]()}, buffer)
    evil = {**weights, "state_dict": base64.b64encode(buffer.getvalue()).decode()}
    status, answer = post(replica.url, "/weights", evil, replica.key)
    assert status == 400 and "weights_only" in answer["detail"]
    assert post(replica.url, "/predict", {"inputs": [[[1, 2], [3]]]}, replica.key)[0] == 400
    # a version is a whole number a trainer reaches; inputs are finite numbers
    status, answer = post(replica.url, "/weights", {**weights, "version": 6.7}, replica.key)
    assert status == 400 and "give a whole number" in answer["detail"]
    status, answer = post(replica.url, "/predict", {"inputs": [[[float("nan")]]]}, replica.key)
    assert status == 400 and "finite" in answer["detail"]
    # no route answers without the key, and a body is not read before the key is checked
    for path, data in (("/docs", None), ("/openapi.json", None), ("/predict", b"not json at all")):
        try:
            urllib.request.urlopen(urllib.request.Request(replica.url + path, data), timeout=30)
            code = 200
        except urllib.error.HTTPError as exc:
            code = exc.code
        assert code == 401, path
    # nothing of that changed what it serves
    assert post(replica.url, "/predict", {"inputs": [[[0.1]]]}, replica.key)[1]["version"] == current


def test_a_replica_that_dies_is_started_again_with_its_last_version(replica: Replica) -> None:
    before = post(replica.url, "/predict", {"inputs": [[[0.1]]]}, replica.key)[1]["version"]
    generator = RequestGenerator({"edge-1": (replica.url, 10.0)}, request, api_key=replica.key, seed=5, timeout_s=5)
    stop = threading.Event()
    requests = threading.Thread(target=generator.run, args=(120.0, stop))
    requests.start()
    time.sleep(1.0)
    os.killpg(replica.status()["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not _restarted(replica.status()):
        time.sleep(0.5)
    status = replica.status()
    time.sleep(1.0)  # answered again
    stop.set()
    requests.join(60)
    assert status["restarts"] == 1 and status["events"][0]["exit_code"] == -signal.SIGKILL
    print(f"replica down for {status['events'][0]['down_s']:.1f} s")
    results = sorted(generator.results, key=lambda r: r.due_s)
    failed = [r for r in results if not r.ok]
    # the requests sent while it was down failed, and were counted; the others were answered
    assert failed and results[0].ok and results[-1].ok
    assert generator.summary()["failed"] == len(failed)
    answers = [r.version for r in results if r.ok]
    assert set(answers) == {before}  # started again with the newest weights it had kept


def _restarted(status: dict) -> bool:
    return bool(status["events"]) and status["events"][-1]["restarted"] is not None


def test_bad_arguments_are_one_line_and_exit_code_2(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text(secrets.token_urlsafe(32))
    key.chmod(0o644)
    proc = subprocess.run(
        [*ENGAGE, "serve", "--model", "torch.nn:Linear", "--model-kwargs", '{"in_features": 1, "out_features": 1}',
         "--api-key-file", str(key)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--api-key-file" in proc.stderr and "chmod 600" in proc.stderr
    key.chmod(0o600)
    proc = subprocess.run(
        [*ENGAGE, "serve", "--model", "torch.nn:Linear", "--api-key-file", str(key)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--model torch.nn:Linear cannot be built: TypeError" in proc.stderr


def test_a_replica_built_from_a_checkpoint_checks_weights_against_it(tmp_path: Path, monkeypatch) -> None:
    import engage.deploy.serve.apis as apis
    from engage.deploy.serve.apis import InferenceAPI, WeightsAPI
    from engage.deploy.serve.replica import ModelSpec, ReplicaSpec

    trainer = pl.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.fit(Sine(width=8), loader(samples=64))
    trainer.save_checkpoint(tmp_path / "sine.ckpt")
    spec = ReplicaSpec(
        "r", ModelSpec("serve_app:Sine", checkpoint=str(tmp_path / "sine.ckpt")), str(tmp_path), "127.0.0.1", 1, "k"
    )
    api = WeightsAPI(spec, api_path="/weights")
    # the weights worker builds no model: it waits for the inference worker's signature
    monkeypatch.setattr(apis, "SIGNATURE_TIMEOUT_S", 0.2)
    with pytest.raises(TimeoutError, match=r"signature.json was not written within 0.2 s by the inference worker"):
        api.setup("cpu")
    InferenceAPI(spec, api_path="/predict").setup("cpu")  # loads the checkpoint, writes its signature
    api.setup("cpu")
    assert api.predict((3, serialize(Sine(width=8).state_dict()), None)) == 3
    with pytest.raises(
        Exception, match=r"do not fit the model: net.0.weight is \(4, 1\) torch.float32, the model's is \(8, 1\)"
    ):
        api.predict((4, serialize(Sine(width=4).state_dict()), None))


def test_the_request_sender_refuses_bad_arguments_in_one_line(tmp_path: Path, capsys) -> None:
    from engage.deploy.serve.load import RequestPool, main

    pool = RequestPool([np.zeros((2, 3))], np.zeros((2, 1))).save(tmp_path / "pool.npz")
    key = tmp_path / "k"
    key.write_text(secrets.token_urlsafe(32))
    key.chmod(0o644)
    route = ["--route", "fog-1=5@http://127.0.0.1:9"]
    assert main(["--pool", str(pool), "--api-key-file", str(key), *route, "--out", str(tmp_path / "o")]) == 2
    assert "chmod 600" in capsys.readouterr().err
    key.chmod(0o600)
    assert main(["--pool", str(tmp_path / "none.npz"), "--api-key-file", str(key), *route, "--out", "o"]) == 2
    assert "No such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--pool", str(pool), "--api-key-file", str(key), "--route", "fog-1=fast@x", "--out", "o"])
    assert exit_.value.code == 2 and "is not NAME=RATE@URL" in capsys.readouterr().err


def test_the_sender_probes_each_replica_on_a_kept_connection_less_the_replica_own_time() -> None:
    """A probe is a request of the pool's size, sent as the requests are; one that opened its
    connection, or that the replica did not time, measures nothing; the others give their time
    less what the replica says it took (here 30 ms of its 35 ms)."""
    import http.server
    import json

    from engage.deploy.serve.load import RequestGenerator

    bodies: list[tuple[str, bytes]] = []

    class Replica(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept connections

        def do_POST(self) -> None:
            bodies.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            time.sleep(0.035)
            self.send_response(200)
            if len(bodies) % 4:  # every fourth answer untimed: its probe measures nothing
                self.send_header("x-engage-service-s", "0.030")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        generator = RequestGenerator({"s": (url, 0.001)}, request, api_key="k" * 32, probe_s=0.1)
        generator.run(duration_s=1.0)
    finally:
        server.shutdown()
    probes = generator.probes[url]
    # one a round; the first (its connection opened) and the untimed ones left out
    assert 2 <= len(probes) <= len(bodies) - 1 - (len(bodies) // 4), (probes, len(bodies))
    assert all(0.0 <= p < 0.02 for p in probes), probes  # 35 ms less the 30 the replica took
    inputs, _ = request(np.random.default_rng(0))
    assert {path for path, _ in bodies} == {"/predict"}
    assert all(json.loads(body) == json.loads(json.dumps({"inputs": inputs})) for _, body in bodies)


def test_the_key_is_checked_before_the_body_is_read_and_outputs_of_any_shape_are_served() -> None:
    import asyncio

    from engage.deploy.serve.apis import RequireKey, _plain

    reached, read = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await receive()

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    def call(headers):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/predict", "headers": headers}
        asyncio.run(RequireKey(app, "k" * 32)(scope, receive, send))
        return sent

    refused = call([(b"x-api-key", b"wrong")])
    assert refused[0]["status"] == 401 and not reached and not read
    assert call([])[0]["status"] == 401 and not reached and not read
    call([(b"x-api-key", b"k" * 32)])
    assert reached == ["/predict"] and read == [1]
    # an LSTM's (output, (h, c)), and non-finite outputs as null
    lstm = (torch.ones(1, 2), (torch.zeros(1, 1), torch.tensor([float("inf")])))
    assert _plain(lstm) == [[[1.0, 1.0]], [[[0.0]], [None]]]


def test_serve_arguments_are_checked_before_anything_starts(tmp_path: Path) -> None:
    import argparse

    from engage.deploy.serve.supervisor import ServeError, add_arguments, spec_from_arguments

    key = tmp_path / "k"
    key.write_text(secrets.token_urlsafe(32))
    key.chmod(0o600)
    (tmp_path / "afile").write_text("")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "torch.nn:Linear", "--model-kwargs", '{"in_features": 1, "out_features": 1}']
    for extra, expected in (
        (["--port", "70000"], "--port is 70000; give a port from 1 to 65535"),
        (["--max-payload-mb", "nan"], "--max-payload-mb is nan; give a finite size"),
        (["--max-payload-mb", "1e-9"], "--max-payload-mb is 1e-09; give a finite size"),
        (["--folder", str(tmp_path / "afile")], "afile is a file; give a folder"),
        (["--checkpoint", str(tmp_path / "x.ckpt")], "--model-kwargs is not used with --checkpoint"),
    ):
        namespace = parser.parse_args([*base, "--api-key-file", str(key), *extra])
        with pytest.raises(ServeError, match=expected):
            spec_from_arguments(namespace)


def test_a_replica_that_refuses_the_key_fails_the_run_in_one_line() -> None:
    import http.server

    from engage.core.online.outcome import OnlineRunFailed
    from engage.deploy.serving import ServingError

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        callback = PublishWeights([f"http://127.0.0.1:{server.server_port}"], api_key="k" * 32)
        callback._send(callback.replicas[0], 1, b"{}")
        with pytest.raises(ServingError, match=r"refused the API key \(HTTP 401\); give the replicas' key") as info:
            callback._check()
        # engage run ends such a run as any run that did not do what it was asked: one line, exit code 4
        assert isinstance(info.value, OnlineRunFailed) and info.value.exit_code == 4
    finally:
        server.shutdown()
        server.server_close()


def _replica_stand_in(refuse) -> tuple[object, list[int]]:
    """A replica's ``/weights`` endpoint that answers 500 to the versions ``refuse(version)``
    names and 200 to the others; returns its HTTP server and the versions it was sent."""
    import http.server

    seen: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            version = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["version"]
            seen.append(version)
            refused = refuse(version)
            self.send_response(500 if refused else 200)
            self.end_headers()
            self.wfile.write(b'{"detail": "not ready"}' if refused else b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _trainer(root: Path, callback: PublishWeights) -> pl.Trainer:
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return pl.Trainer(max_steps=4, callbacks=[callback], enable_model_summary=False, default_root_dir=root, **options)


def test_a_replica_left_without_the_last_version_fails_the_run_and_one_back_in_time_does_not(tmp_path: Path) -> None:
    from engage.deploy.serving import ServingError

    down, down_seen = _replica_stand_in(lambda version: version == 4)  # fails the last version, every time
    back, back_seen = _replica_stand_in(lambda version: version == 4 and back_seen.count(4) < 3)  # restarting
    well, _ = _replica_stand_in(lambda version: False)
    try:
        urls = [f"http://127.0.0.1:{server.server_port}" for server in (down, back, well)]
        callback = PublishWeights(urls, api_key="k" * 32, every_n_steps=2, timeout_s=3)
        trainer = _trainer(tmp_path, callback)
        with pytest.raises(
            ServingError, match=rf"^1 of 3 replicas do not serve the last version of the weights \(version 4\), sent "
            rf"again for [23] s; {urls[0]}: HTTP 500: {{\"detail\": \"not ready\"}}$"
        ):  # fmt: skip
            trainer.fit(Sine(), loader(samples=256))
        assert down_seen[0] == 2 and down_seen.count(4) >= 3  # sent again once a second
        assert back_seen.count(4) == 3 and callback.failures >= 4  # took it at the third time, counted
        only_back = PublishWeights(urls[1:], api_key="k" * 32, every_n_steps=2, timeout_s=3)
        back_seen.clear()
        trainer = _trainer(tmp_path, only_back)
        trainer.fit(Sine(), loader(samples=256))
        # version 2 is sent unless the sender was still busy when version 4 came
        assert back_seen[-3:] == [4, 4, 4] and back_seen[:-3] in ([2], []) and only_back.failures == 2
    finally:
        for server in (down, back, well):
            server.shutdown()
            server.server_close()


def test_a_replica_address_that_answers_no_http_holds_no_other_replica_back(tmp_path: Path) -> None:
    import socketserver

    from engage.deploy.serving import ServingError

    class Garbage(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(65536)
            self.request.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    garbage = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    well, seen = _replica_stand_in(lambda version: False)
    try:
        urls = [f"http://127.0.0.1:{garbage.server_address[1]}", f"http://127.0.0.1:{well.server_port}"]
        callback = PublishWeights(urls, api_key="k" * 32, every_n_steps=2, timeout_s=2)
        # found as training starts, not at its end
        with pytest.raises(ServingError, match=rf"^replica {urls[0]} does not answer HTTP as training starts \("):
            _trainer(tmp_path, callback).fit(Sine(), loader(samples=256))
        assert not seen
        # once there, it holds no other replica back: the other one takes every version
        callback = PublishWeights(urls[1:], api_key="k" * 32, every_n_steps=2, timeout_s=2)
        trainer = _trainer(tmp_path, callback)
        callback.replicas.insert(0, urls[0])  # as a replica added while it trains would be
        callback._check_replicas = lambda: None
        with pytest.raises(ServingError, match=rf"^1 of 2 replicas .*; {urls[0]}: BadStatusLine"):
            trainer.fit(Sine(), loader(samples=256))
        assert seen[-1] == 4
    finally:
        for server in (garbage, well):
            server.shutdown()
            server.server_close()
    with pytest.raises(ValueError, match=r"timeout_s must be a number of seconds > 0, got -1"):
        PublishWeights(urls, api_key="k" * 32, timeout_s=-1)
    with pytest.raises(ValueError, match=r"replicas: give a list of the replicas' base URLs, like \['http"):
        PublishWeights(urls[0], api_key="k" * 32)


def test_a_hung_replica_holds_no_other_replica_back(tmp_path: Path) -> None:
    import socketserver

    from engage.deploy.serving import ServingError

    class Hung(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(65536)
            time.sleep(8)  # reads the request, never answers

    hung = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hung)
    hung.daemon_threads = True
    threading.Thread(target=hung.serve_forever, daemon=True).start()
    arrivals: list[tuple[int, float]] = []
    well, _ = _replica_stand_in(lambda version: arrivals.append((version, time.monotonic())) and False)
    try:
        urls = [f"http://127.0.0.1:{hung.server_address[1]}", f"http://127.0.0.1:{well.server_port}"]
        callback = PublishWeights(urls, api_key="k" * 32, every_n_steps=2, timeout_s=4)
        callback._check_replicas = lambda: None  # it hangs from the start: as one that hangs later
        started = time.monotonic()
        with pytest.raises(ServingError, match=rf"^1 of 2 replicas .*; {urls[0]}: "):
            _trainer(tmp_path, callback).fit(Sine(), loader(samples=256))
        # the healthy replica got its versions as they came, not one timeout (4 s) behind the hung one each
        assert arrivals and arrivals[0][1] - started < 3.5, [(v, t - started) for v, t in arrivals]
    finally:
        for server in (hung, well):
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_a_request_rate_that_is_no_positive_number_is_refused(rate) -> None:
    with pytest.raises(ValueError, match=r"the request rate of edge must be a number > 0, got"):
        RequestGenerator({"edge": ("http://127.0.0.1:8100", rate)}, lambda rng: ([0.0], np.zeros(1)), "k" * 32)


def test_an_answer_is_bounded_as_a_request_is() -> None:
    """A small request of many rows would ask for a huge answer: refused before it is encoded."""
    from types import SimpleNamespace

    from fastapi import HTTPException

    from engage.deploy.serve.apis import InferenceAPI

    api = InferenceAPI.__new__(InferenceAPI)
    api.model, api.version, api.stamp, api.run = torch.nn.Linear(1, 16), 3, (1, 1), "a" * 32
    api.store = SimpleNamespace(stamp=lambda: (1, 1))
    api.replica = SimpleNamespace(name="r", max_payload_bytes=2**20)
    rows = 2**20 // (25 * 16)  # rows of 16 floats, at most 25 bytes each in JSON
    answer = api.encode_response(api.predict([torch.randn(rows, 1) * 1e-5]))
    assert (answer["version"], answer["run"]) == (3, "a" * 32) and len(json.dumps(answer)) <= 2**20
    with pytest.raises(HTTPException) as refused:
        api.predict([torch.zeros(rows + 1, 1)])
    assert (
        refused.value.status_code == 413 and f"the answer would hold {(rows + 1) * 16} numbers" in refused.value.detail
    )


def test_the_weights_worker_stops_waiting_when_the_model_cannot_be_built(tmp_path: Path) -> None:
    from engage.deploy.serve.weights import wait_for_signature, write_build_failure

    write_build_failure(tmp_path, "ModuleNotFoundError: No module named 'nosuch'")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot build the model: ModuleNotFoundError: No module named 'nosuch'"):
        wait_for_signature(tmp_path, timeout_s=60)
    assert time.monotonic() - started < 1


def test_versions_are_ordered_within_one_training_and_a_new_training_replaces_what_an_earlier_one_left(
    tmp_path: Path,
) -> None:
    """A replica kept from an earlier training (its folder holds version 500) takes the next
    training's first version, whatever its number, and orders versions within that training."""
    from engage.deploy.serve.weights import WeightsRefused, WeightStore, signature

    model = Sine()
    store = WeightStore(tmp_path / "weights", signature(model.state_dict()))
    payload = serialize(model.state_dict())
    earlier, later, third = "a" * 32, "b" * 32, "c" * 32
    assert store.publish(500, payload, earlier) == 500
    with pytest.raises(WeightsRefused, match="not newer"):
        store.publish(500, payload, earlier)
    assert store.publish(10, payload, later) == 10 and store.current_run() == later
    with pytest.raises(WeightsRefused, match="not newer"):
        store.publish(10, payload, later)
    assert store.publish(10, payload, third) == 10  # the same number from another training: its own file
    assert store.current_run() == third and store.load()[0] == 10
    assert sorted(p.name for p in (tmp_path / "weights").glob("v*.pt")) == [f"v10-{third}.pt", "v10.pt"]
    # two trainings publishing to one replica do not take turns: the one replaced is refused from then on
    with pytest.raises(
        WeightsRefused, match=r"training bbbbbbbb was replaced on this replica by a newer training \(cccccccc\)"
    ) as refused:
        store.publish(11, payload, later)
    assert refused.value.superseded and not refused.value.stale and store.current_run() == third
    state = Sine().state_dict()
    state[next(iter(state))].fill_(float("nan"))
    with pytest.raises(WeightsRefused, match="weights hold NaN or infinite values in"):
        store.publish(12, serialize(state), third)


def test_publishing_refuses_what_it_cannot_send_and_a_training_no_replica_took_fails(tmp_path: Path) -> None:
    """A replica address without its scheme is refused when the callback is made; weights that
    hold NaN are never sent (a diverged training does not replace the served model); a training
    whose every publication failed ends with one line, not as a success."""
    from types import SimpleNamespace

    from engage.deploy.serving import ServingError

    with pytest.raises(ValueError, match=r"^replicas: '127\.0\.0\.1:8100' is not a replica's URL; give its base URL"):
        PublishWeights(["127.0.0.1:8100"], api_key="k" * 32)
    callback = PublishWeights([f"http://127.0.0.1:{free_port()}"], api_key="k" * 32, every_n_steps=1, timeout_s=2)
    diverged = SimpleNamespace(
        trainer=SimpleNamespace(is_global_zero=True), state_dict=lambda: {"w": torch.tensor([float("nan")])}
    )
    nan = PublishWeights(callback.replicas, api_key="k" * 32)
    nan._offer(5, diverged)
    assert nan._pending is None
    trainer = pl.Trainer(max_steps=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    # nothing listens there: said as training starts
    with pytest.raises(ServingError, match=r"does not answer HTTP as training starts \(.*Connection refused"):
        trainer.fit(Sine(), loader(samples=256))
    # a replica that stops answering once training began: every publication fails
    callback._check_replicas = lambda: None
    trainer = pl.Trainer(max_steps=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    # two versions offered; a sender still busy with the first when the second comes sends the newer only
    with pytest.raises(
        ServingError, match=r"^no replica took any version of the weights \((1 attempt|2 attempts); the"
    ):
        trainer.fit(Sine(), loader(samples=256))
    assert {p.status for p in callback.publications} == {0}


def test_a_replica_name_stays_in_its_folder_a_missing_checkpoint_is_named_and_a_port_in_time_wait_is_free(
    tmp_path: Path,
) -> None:
    import argparse

    from engage.deploy.serve.supervisor import ServeError, add_arguments, spec_from_arguments

    key = tmp_path / "k"
    key.write_text(secrets.token_urlsafe(32))
    key.chmod(0o600)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "torch.nn:Linear", "--api-key-file", str(key)]
    kwargs = ["--model-kwargs", '{"in_features": 1, "out_features": 1}']
    with pytest.raises(ServeError, match=r"^--name '\.\./escape': give letters, digits"):
        spec_from_arguments(parser.parse_args([*base, *kwargs, "--name", "../escape"]))
    with pytest.raises(ServeError, match=r"^--checkpoint \S+nothere\.ckpt: no such file"):
        spec_from_arguments(parser.parse_args([*base, "--checkpoint", str(tmp_path / "nothere.ckpt")]))
    # a replica just stopped leaves its port's connections in TIME_WAIT: the next one may listen there
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its end waits in TIME_WAIT
    server.close()
    client.close()
    spec = spec_from_arguments(
        parser.parse_args([*base, *kwargs, "--port", str(port), "--folder", str(tmp_path / "replica")])
    )
    assert spec.port == port
    # one replica a folder: a second supervisor there (two engage serve without --name) is refused
    from engage.deploy.serve.supervisor import claim_folder

    claim = claim_folder(Path(spec.folder))
    try:
        with pytest.raises(ServeError, match=r"is in use by another replica; give each replica its own --name"):
            claim_folder(Path(spec.folder))
    finally:
        os.close(claim)
    os.close(claim_folder(Path(spec.folder)))  # free again once its holder let go
