"""Start a local Prefect server + worker and register the scheduled retraining (make orchestrate).

    python infra/prefect/serve.py [--port 4200] [--home ~/.prefect] [--no-worker]

Starts ``prefect server start --host 127.0.0.1`` (unless one already answers on the port),
waits until it is healthy, creates the ``process`` work pool named in ``prefect.yaml``,
registers the deployment (cron schedule included) for this checkout and starts a worker, then
keeps running until Ctrl-C. Open http://127.0.0.1:<port> to see the schedule, trigger a run
("Quick run") and follow its stage logs, artifacts and retries. On exit the worker is stopped
before the server (a worker whose server vanished hangs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infra.prefect.local_server import (  # noqa: E402 - after the sys.path fix above
    PREFECT_FILE,
    ServerError,
    api_url,
    register_deployments,
    start_server,
    start_worker,
    stop_process,
    wait_healthy,
    work_pools,
)


def _already_up(url: str) -> bool:
    try:
        wait_healthy(url, timeout_s=1.0)
    except ServerError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", "4200")))
    parser.add_argument(
        "--home", type=Path,
        default=Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser(),
        help="PREFECT_HOME of the server and worker (its SQLite database lives there)",
    )
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_FILE)
    parser.add_argument("--no-worker", action="store_true", help="register only; start no worker")
    args = parser.parse_args()

    url = api_url(args.port)
    server = None
    worker = None
    logs = args.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        if _already_up(url):
            print(f"using the Prefect server already running at {url}")
        else:
            print(f"starting Prefect server on {url} (PREFECT_HOME={args.home}, log {logs / 'server.log'})")
            server = start_server(args.home, args.port, log=(logs / "server.log").open("ab"))
            wait_healthy(url, timeout_s=120.0, proc=server)
        print(register_deployments(args.home, url, root=ROOT, prefect_file=args.prefect_file))
        if not args.no_worker:
            pool = work_pools(args.prefect_file)[0]
            print(f"starting a worker on pool {pool!r} (log {logs / 'worker.log'})")
            worker = start_worker(pool, args.home, url, root=ROOT, log=(logs / "worker.log").open("ab"))
        print(f"UI: {url.removesuffix('/api')}  (Ctrl-C stops the worker and the server)")
        while not stop["now"]:
            for name, proc in (("server", server), ("worker", worker)):
                if proc is not None and proc.poll() is not None:
                    print(f"the {name} exited with code {proc.returncode}; see {logs}", file=sys.stderr)
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            stop_process(worker)
        if server is not None:
            stop_process(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
