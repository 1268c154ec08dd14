"""Ctrl-C during an MLflow write to an SQLite store: the write finishes, then the interrupt is
raised, and the store takes the run's status at once (not after SQLite's 20 s lock timeout)."""

import os
import signal
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from engage.core.tracking.mlflow_run import RunLogger
from engage.core.tracking.uninterrupted import ctrl_c_deferred, uninterrupted_client


@pytest.fixture
def default_ctrl_c():
    """Ctrl-C raising KeyboardInterrupt, as in a program (a test runner's worker may ignore it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_call_interrupted_midway_ends_then_raises(default_ctrl_c):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_deferred():
            steps.append("began")
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # Python instructions, each a point where Ctrl-C would land
                pass
            steps.append("ended")
    assert steps == ["began", "ended"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_the_program_handles_is_held_as_ctrl_c_is():
    class Stopped(BaseException):
        pass

    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    steps = []
    try:
        with pytest.raises(Stopped):
            with ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10_000):
                    pass
                steps.append("ended")
        assert steps == ["ended"] and signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_second_ctrl_c_stops_the_call_at_once(default_ctrl_c):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("held")
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):
                pass
            steps.append("ended")
    assert steps == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_clients_and_the_run_logger_copy_and_pickle(tmp_path):
    import copy
    import pickle

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = RunLogger(experiment_name="copies", tracking_uri=uri)
    experiment_id = logger.experiment.get_experiment_by_name("copies").experiment_id
    again = pickle.loads(pickle.dumps(logger))  # as a spawned rank gets it
    assert again.experiment.get_experiment(experiment_id).name == "copies"
    assert copy.deepcopy(logger).experiment.wrapped is not logger.experiment.wrapped
    client = pickle.loads(pickle.dumps(uninterrupted_client(uri)))
    assert client.get_experiment(experiment_id).name == "copies"


def test_no_ctrl_c_leaves_the_call_and_its_result_alone(default_ctrl_c):
    with ctrl_c_deferred():
        value = sum(range(10))
    assert value == 45
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_handler_of_another_thread_is_left_alone(default_ctrl_c):
    seen = []

    def other():
        with ctrl_c_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


@pytest.mark.slow
def test_ctrl_c_amid_mlflow_writes_leaves_the_store_writable(tmp_path, default_ctrl_c):
    """Without the deferral, about one interrupt in ten lands where SQLAlchemy drops a connection
    with its write lock held: the next write then waits 20 s and fails with ``database is
    locked``. Thirty interrupts at random moments of a stream of writes; after each, the run's
    status is written within a second."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment("ctrl-c")
    logger = RunLogger(experiment_name="ctrl-c", tracking_uri=uri)
    client = logger.experiment
    for trial in range(30):
        run_id = client.create_run(experiment).info.run_id
        timer = threading.Timer(0.005 + (trial % 10) * 0.013, os.kill, (os.getpid(), signal.SIGINT))
        written = 0
        with pytest.raises(KeyboardInterrupt):
            while True:
                client.log_metric(run_id, "loss", 1.0 / (written + 1), step=written)
                client.set_tag(run_id, f"tag{written % 5}", str(written))
                written += 1
                if written == 1:
                    timer.start()  # amid the writes
        timer.join()
        started = time.perf_counter()
        client.set_terminated(run_id, status="KILLED")
        took = time.perf_counter() - started
        assert took < 1.0, f"trial {trial}: the store took {took:.1f} s to take the status"
        assert client.get_run(run_id).info.status == "KILLED"
