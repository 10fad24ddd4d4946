"""A toy DVC repository for flow tests: three fast stages shaped like the real pipeline's tail.

``train`` writes a "checkpoint" whose quality is ``params.yaml: train.score``, ``evaluate``
writes a report shaped like the real evaluate stage's (``accuracy[sampler][budget]``) and
``package`` (candidates ``uniform`` and ``msjoe``, like the real stage's ``--candidate`` rows)
writes a Bento-like folder and a ``bento_tag``. Each stage takes a second of DVC
overhead, so the gate and retry paths run end to end with real ``dvc repro`` in a few seconds.
``train.fail`` makes the train stage fail ``always`` or ``once`` (then succeed), or ``sleep``
for ``train.sleep_s`` seconds first; every attempt is appended to ``attempts.log`` so tests can
count retries.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

SCRIPT = r'''
import hashlib, json, sys
from pathlib import Path
import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
step = sys.argv[1]

def write(path, payload):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))

if step == "train":
    with open("attempts.log", "a") as log:
        log.write("train\n")
    print("training the toy model")
    fail = params["train"].get("fail", "never")
    if fail == "sleep":
        import time
        time.sleep(float(params["train"].get("sleep_s", 30)))
    if fail == "always" or (fail == "once" and not Path(".flaky-done").exists()):
        Path(".flaky-done").touch()
        print("simulated failure", file=sys.stderr)
        sys.exit(3)
    score = float(params["train"]["score"])
    Path("models/cand").mkdir(parents=True, exist_ok=True)
    Path("models/cand/weights.txt").write_text(f"{score}\n")
    write("reports/train.json", {"loss": round(1 - score, 4), "steps": 3})
elif step == "evaluate":
    score = float(Path("models/cand/weights.txt").read_text())
    write("reports/evaluate.json", {
        "accuracy": {"uniform": {"4": 0.40, "8": 0.45}, "msjoe": {"4": score - 0.05, "8": score}},
        "evidence_hit_rate": {"uniform": {"4": 0.3, "8": 0.4}, "msjoe": {"4": 0.5, "8": 0.6}},
        "accuracy_per_category": {"uniform": {"4": {"count": 0.5}}},
        "questions": {"uniform": {"4": 10, "8": 10}, "msjoe": {"4": 10, "8": 10}},
        "split": "eval",
        "params": {"budgets": [4, 8]},
    })
elif step == "package":
    digest = hashlib.sha256(Path("models/cand/weights.txt").read_bytes()).hexdigest()[:12]
    Path("build/bento").mkdir(parents=True, exist_ok=True)
    Path("build/bento/model.txt").write_text(Path("models/cand/weights.txt").read_text())
    write("reports/package.json", {"bento_tag": f"msjoe:{digest}"})
'''

DVC_YAML: dict[str, Any] = {
    "stages": {
        "train": {
            "cmd": "python toy.py train",
            "deps": ["toy.py"],
            "params": ["train"],
            "outs": ["models/cand"],
            "metrics": [{"reports/train.json": {"cache": False}}],
        },
        "evaluate": {
            "cmd": "python toy.py evaluate",
            "deps": ["toy.py", "models/cand"],
            "metrics": [{"reports/evaluate.json": {"cache": False}}],
        },
        "package": {
            "cmd": "python toy.py package --candidate uniform=models/cand --candidate msjoe=models/cand",
            "deps": ["toy.py", "models/cand", "reports/evaluate.json"],
            "outs": ["build/bento"],
            "metrics": [{"reports/package.json": {"cache": False}}],
        },
    }
}


def repro_env() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, quiet DVC."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }


def set_params(
    repo: Path, *, score: float, fail: str = "never", margin: float = 0.05, sleep_s: float = 30.0
) -> None:
    """Write the toy params: the model's quality, how train fails, the gate settings."""
    params = {
        "train": {"score": score, "fail": fail, "sleep_s": sleep_s},
        "package": {"metric": "accuracy", "budget": 8, "gate": {"margin": margin}},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_toy_repo(repo: Path, *, score: float = 0.6, with_package: bool = True) -> Path:
    """Create the toy DVC repository (no git: ``dvc init --no-scm``) in ``repo``."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "toy.py").write_text(SCRIPT)
    spec = {"stages": dict(DVC_YAML["stages"])}
    if not with_package:
        spec["stages"].pop("package")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    set_params(repo, score=score)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, env=repro_env(), check=True
    )
    return repo


def attempts(repo: Path) -> int:
    """How many times the train stage's command started."""
    log = repo / "attempts.log"
    return len(log.read_text().splitlines()) if log.is_file() else 0
