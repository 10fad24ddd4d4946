"""The bento installs what serving needs and not the training stack; its list is up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bento_requirements_are_the_serving_closure_and_up_to_date() -> None:
    done = subprocess.run([sys.executable, "bento/requirements.py", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    names = {line.split("==", 1)[0].lower().replace("_", "-")
             for line in (REPO / "bento" / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")}
    assert {"torch", "transformers", "open-clip-torch", "decord", "bentoml", "numpy", "pillow"} <= names
    training = {"deepspeed", "prefect", "dvc", "great-expectations", "sqlalchemy", "alembic", "pandas",
                "pyarrow", "psycopg", "matplotlib"}
    assert not names & training, sorted(names & training)
    assert "bento/requirements.txt" in (REPO / "bento" / "bentofile.yaml").read_text()
