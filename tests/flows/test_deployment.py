"""The deployment definition against a real local Prefect server: registered, read back, run.

Starts ``prefect server start`` in a temporary PREFECT_HOME, registers ``infra/prefect/prefect.yaml``
with the same helper ``make orchestrate`` uses, reads the deployment and its cron schedule back
through the client, then lets a real process worker execute one run of it on the toy repository.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.prefect.local_server import (
    PREFECT_FILE,
    api_url,
    deployment_specs,
    free_port,
    register_deployments,
    start_server,
    start_worker,
    stop_process,
    wait_healthy,
    work_pools,
)
from msjoe.store import list_pipeline_runs, list_stage_runs
from tests.flows.toyrepo import make_toy_repo

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    home = tmp_path / "prefect-home"
    port = free_port()
    url = api_url(port)
    log = (tmp_path / "server.log").open("wb")
    proc = start_server(home, port, ui=False, log=log)
    try:
        wait_healthy(url, timeout_s=120, proc=proc)
        yield home, url
    finally:
        stop_process(proc)
        log.close()


def test_prefect_yaml_declares_a_weekly_cron_on_a_process_pool() -> None:
    (spec,) = deployment_specs(PREFECT_FILE)
    assert spec["entrypoint"] == "flows/pipeline.py:retrain" and (ROOT / "flows" / "pipeline.py").is_file()
    assert spec["schedules"][0]["cron"] == "0 3 * * 1" and work_pools(PREFECT_FILE) == ["msjoe-process"]


def test_deployment_is_registered_with_its_schedule_and_a_worker_runs_it(
    tmp_path: Path, server: tuple[Path, str], store_url: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, url = server
    # The deployment runs in place in the registered checkout: give the toy repo this project's
    # flows/ and deployment file so it looks like a checkout of the project.
    repo = make_toy_repo(tmp_path / "toy", with_package=False)
    shutil.copytree(ROOT / "flows", repo / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "infra" / "prefect").mkdir(parents=True)
    shutil.copy(PREFECT_FILE, repo / "infra" / "prefect" / "prefect.yaml")
    (spec,) = deployment_specs(PREFECT_FILE)

    output = register_deployments(home, url, root=repo, prefect_file=repo / "infra" / "prefect" / "prefect.yaml")
    assert "successfully created" in output

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"msjoe-retrain/{spec['name']}")
        assert deployment.work_pool_name == "msjoe-process"
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == spec["schedules"][0]["cron"] == "0 3 * * 1"
        assert schedule.schedule.timezone == "UTC" and schedule.active
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(repo.resolve())}}
        ]
        assert deployment.parameters["retries"] == spec["parameters"]["retries"]
        assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
        assert client.read_work_pool("msjoe-process").type == "process"

        worker_log = (tmp_path / "worker.log").open("wb")
        worker = start_worker("msjoe-process", home, url, root=repo, log=worker_log,
                              env={"PREFECT_WORKER_QUERY_SECONDS": "1"})
        try:
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"retries": 0, "lock_timeout_s": 0}
            )
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                state = client.read_flow_run(run.id).state
                if state is not None and state.is_final():
                    break
                time.sleep(1)
        finally:
            stop_process(worker)  # the worker first: one whose server vanished hangs
            worker_log.close()
        assert state is not None and state.is_completed(), (
            f"{state}\n{(tmp_path / 'worker.log').read_text(errors='replace')[-4000:]}"
        )

    runs = list_pipeline_runs(store_url)
    assert [(r["run_key"], r["trigger"], r["status"]) for r in runs] == [(f"prefect:{run.id}", "deployment", "completed")]
    assert {r["stage"]: r["status"] for r in list_stage_runs(store_url)} == {"train": "completed", "evaluate": "completed"}
