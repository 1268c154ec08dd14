"""A tiny Hydra app for the launcher tests: returns 2*x, can fail, fail once, be killed once by
SIGKILL, sleep, exit with an error after returning, log its own MLflow run under the sweep's
parent run, or open one as a plain MLflow user's app does (``mlflow.start_run()``)."""

import json
import os
import random
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> int:
    from engage.deploy.job import JobContract

    x = int(cfg.get("x", 0))
    job = JobContract.current()  # what the launcher told this job about its sweep
    print(f"job x={x} pid={os.getpid()} host={job.host if job else None}")
    # how the job's process was started (a fork server's child or a new interpreter)
    print(f"ppid={os.getppid()} sid={os.getsid(0)} random={random.random()}")
    print(f"job_dir={job.folder if job else None} cwd={os.getcwd()}")
    print(f"placement={json.dumps(dict(job.placement)) if job else None}")
    time.sleep(float(cfg.get("sleep", 0.0)))
    if cfg.get("log_run"):
        import mlflow
        from hydra.core.hydra_config import HydraConfig

        from engage.core.tracking import parent_run_id

        # set before the sweep's parent run exists: the experiment may be created here, through
        # the server, while the launcher creates it in the store
        mlflow.set_experiment(job.tracking.experiment)
        # the job's run is found by its id (MLflow's last active run), so the launcher completes it
        tags = {"engage.output_dir": HydraConfig.get().runtime.output_dir}
        parent = parent_run_id()
        if parent:  # none when the launcher could not open MLflow
            tags["mlflow.parentRunId"] = parent
        with mlflow.start_run(tags=tags):
            mlflow.log_metric("x", x)
    if cfg.get("fluent_run"):
        # a plain MLflow user's app: its own run, in no experiment and under no parent of its own
        import mlflow

        with mlflow.start_run(run_name=f"x={x}"):
            mlflow.log_metric("x", x)
            time.sleep(float(cfg.get("fluent_sleep", 0.0)))
    if x == int(cfg.get("exit_after_return_on", -1)):
        # the task returns; then the process ends with code 5, as a failed rank or a crash in
        # teardown would (a new interpreter waits for this thread before it exits)
        import threading

        threading.Thread(target=lambda: (time.sleep(0.5), os._exit(5))).start()
    if x == int(cfg.get("fail_on", -1)):
        raise ValueError(f"boom at x={x}")
    marker = cfg.get("sigkill_marker")  # killed once by SIGKILL, as the out-of-memory killer would
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), 9)
    flaky = cfg.get("flaky_marker")  # every job fails once, or the one of x=flaky_on
    if flaky and x == int(cfg.get("flaky_on", x)) and not Path(f"{flaky}.{x}").exists():
        Path(f"{flaky}.{x}").write_text("failed once")
        raise RuntimeError(f"flaky failure at x={x}")
    return 2 * x


if __name__ == "__main__":
    main()
