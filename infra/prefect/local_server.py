"""A local Prefect server, work pool and worker for the retraining deployment.

``prefect.yaml`` declares the deployment; this module does the surrounding chores that make it
visible and runnable on one machine (it lives next to the deployment file, not in ``flows/``:
it runs Prefect, the flows run on it): start ``prefect server start`` on localhost, wait until it
answers, create the process work pool the deployment names, register the deployment with
``prefect deploy`` and start a worker that picks up the scheduled runs. ``infra/prefect/serve.py``
(``make orchestrate``) chains them; the tests use the same functions against a throw-away server.

Every child process gets an explicit environment (``PREFECT_HOME``, ``PREFECT_API_URL``) so a
developer's own Prefect profile is never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

#: Repository root (this file is ``<root>/infra/prefect/local_server.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The deployment definition registered by :func:`register_deployments`, next to this file.
PREFECT_FILE = Path(__file__).resolve().with_name("prefect.yaml")


class ServerError(RuntimeError):
    """The local Prefect server did not start, or a Prefect CLI command failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for throw-away servers in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def api_url(port: int, host: str = "127.0.0.1") -> str:
    """The REST API address of a server started with ``--host host --port port``."""
    return f"http://{host}:{port}/api"


def prefect_env(
    home: Path, url: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for Prefect child processes: own ``PREFECT_HOME``, given API, no telemetry."""
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": env.get("DO_NOT_TRACK", "1"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    if url is None:
        env.pop("PREFECT_API_URL", None)
    else:
        env["PREFECT_API_URL"] = url
    env.update(extra or {})
    return env


def prefect_command(*args: str) -> list[str]:
    """The ``prefect`` CLI of this interpreter's environment."""
    return [sys.executable, "-m", "prefect", *args]


def start_server(
    home: Path, port: int = 4200, *, host: str = "127.0.0.1", ui: bool = True, log: IO[Any] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` in the background (SQLite database under ``home``)."""
    Path(home).mkdir(parents=True, exist_ok=True)
    args = ["server", "start", "--host", host, "--port", str(port), "--analytics-off"]
    args.append("--ui" if ui else "--no-ui")
    return subprocess.Popen(
        prefect_command(*args),
        env=prefect_env(Path(home), None),
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_healthy(url: str, timeout_s: float = 90.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Block until ``GET <url>/health`` answers 200; fail early if the server process died."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last: str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"Prefect server exited with code {proc.returncode} before it was healthy")
        try:
            response = httpx.get(f"{url}/health", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(0.5)
    raise ServerError(f"Prefect server at {url} not healthy after {timeout_s:.0f} s ({last})")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 20.0) -> int:
    """SIGTERM the process group (server or worker with its children), SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return int(proc.returncode)


def _cli(args: list[str], env: Mapping[str, str], cwd: Path, timeout_s: float) -> str:
    done = subprocess.run(
        prefect_command("--no-prompt", *args), env=dict(env), cwd=cwd, capture_output=True,
        text=True, timeout=timeout_s, check=False,
    )
    if done.returncode != 0:
        raise ServerError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def deployment_specs(prefect_file: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    """The ``deployments`` entries of a ``prefect.yaml`` (names, pools, schedules)."""
    import yaml

    data = yaml.safe_load(Path(prefect_file).read_text(encoding="utf-8")) or {}
    return [d for d in data.get("deployments") or [] if isinstance(d, dict)]


def work_pools(prefect_file: Path = PREFECT_FILE) -> list[str]:
    """Work pools the deployments of ``prefect_file`` submit to."""
    pools = [(d.get("work_pool") or {}).get("name") for d in deployment_specs(prefect_file)]
    return sorted({p for p in pools if p})


def ensure_work_pool(name: str, home: Path, url: str, *, cwd: Path = REPO_ROOT, timeout_s: float = 120.0) -> bool:
    """Create the process work pool ``name``; an existing pool is kept as is. True if created."""
    env = prefect_env(Path(home), url)
    done = subprocess.run(
        prefect_command("--no-prompt", "work-pool", "create", name, "--type", "process"),
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False,
    )
    if done.returncode == 0:
        return True
    if "already exists" in done.stdout + done.stderr:
        return False
    raise ServerError(f"prefect work-pool create {name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def register_deployments(
    home: Path, url: str, *, root: Path = REPO_ROOT, prefect_file: Path = PREFECT_FILE,
    timeout_s: float = 180.0,
) -> str:
    """Create the work pools and register every deployment of ``prefect_file`` for ``root``.

    ``root`` becomes the deployment's working directory (``MSJOE_ROOT`` in the pull step), so
    the worker runs the flow in that checkout. Returns the CLI's output.
    """
    for pool in work_pools(prefect_file):
        ensure_work_pool(pool, home, url, cwd=root, timeout_s=timeout_s)
    env = prefect_env(Path(home), url, {"MSJOE_ROOT": str(Path(root).resolve())})
    relative = os.path.relpath(Path(prefect_file).resolve(), Path(root).resolve())
    return _cli(["deploy", "--all", "--prefect-file", relative], env, Path(root), timeout_s)


def start_worker(
    pool: str, home: Path, url: str, *, root: Path = REPO_ROOT, log: IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process worker polling ``pool``; flow runs inherit its environment (plus ``env``)."""
    extra = {"MSJOE_ROOT": str(Path(root).resolve()), **(env or {})}
    return subprocess.Popen(
        prefect_command("worker", "start", "--pool", pool, "--type", "process"),
        env=prefect_env(Path(home), url, extra),
        cwd=root,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
