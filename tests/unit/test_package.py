"""Packaging: the winner is chosen by the named metric, imports are idempotent, the release is recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from msjoe.package import VERSION_LENGTH, Candidate, bento_tag_for, package_release, select_winner
from msjoe.store import latest_release, summary
from tests.bento import build_model_dirs, release_config

REPORT = {
    "accuracy": {
        "uniform": {"4": 0.30, "8": 0.40},
        "clip_topk": {"4": 0.35, "8": 0.52},
        "msjoe": {"4": 0.50, "8": 0.52},
        "oracle": {"4": 0.90, "8": 0.95},
    },
    "visual_tokens": {"uniform": {"8": 16.0}, "msjoe": {"8": 12.0}},  # evaluate.json has no latencies (timings)
}


def test_select_winner_by_metric_budget_and_direction() -> None:
    assert select_winner(REPORT, ["uniform", "msjoe"], "accuracy", 4) == ("msjoe", 0.50)
    # ties keep the earlier candidate; the oracle is never a candidate unless named
    assert select_winner(REPORT, ["clip_topk", "msjoe"], "accuracy", 8) == ("clip_topk", 0.52)
    assert select_winner(REPORT, ["uniform", "msjoe"], "visual_tokens", 8, direction="min") == ("msjoe", 12.0)
    assert select_winner(REPORT, ["missing", "uniform"], "accuracy", 8) == ("uniform", 0.40)
    with pytest.raises(KeyError, match="no metric"):
        select_winner(REPORT, ["uniform"], "f1", 8)
    with pytest.raises(ValueError, match="no candidate"):
        select_winner(REPORT, ["uniform"], "accuracy", 16)


@pytest.fixture
def private_store(tmp_path: Path) -> Iterator[Path]:
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    (tmp_path / "models").mkdir()
    BentoMLContainer.model_store.set(ModelStore(str(tmp_path / "models")))
    yield tmp_path
    BentoMLContainer.model_store.reset()


def test_package_imports_the_winner_once_and_records_the_release(private_store: Path) -> None:
    import bentoml

    clip_dir, mllm_dir, sampler_ckpt = build_model_dirs(private_store / "built")
    candidates = [
        Candidate("uniform", "uniform", mllm_dir),
        Candidate("msjoe", "msjoe", mllm_dir, sampler_ckpt, {"config": "tiny"}),
    ]
    cfg = {k: v for k, v in release_config().items() if k not in ("sampler", "sampler_params")}
    url = f"sqlite:///{private_store / 'meta.db'}"
    kwargs = dict(metric="accuracy", budget=4, direction="max", release_cfg=cfg, bentofile=None,
                  build_ctx=private_store, labels={"git_rev": "abc123"}, db_url=url)
    first = package_release(REPORT, candidates, clip_dir, **kwargs)
    assert first["winner"] == "msjoe" and first["score"] == 0.50 and first["reused"] == {"model": False}
    # the version is the content fingerprint: the same release has the same tag on any machine
    assert first["model_tag"] == f"msjoe:{first['fingerprint'][:VERSION_LENGTH]}"
    model = bentoml.models.get(first["model_tag"])
    assert model.info.labels["winner"] == "msjoe" and model.info.labels["git_rev"] == "abc123"
    assert (Path(model.path) / "sampler.pt").is_file()

    again = package_release(REPORT, candidates, clip_dir, **kwargs)
    assert again["reused"] == {"model": True} and again["model_tag"] == first["model_tag"]
    assert len(bentoml.models.list("msjoe")) == 1
    assert summary(url)["releases"] == 1
    assert latest_release(url) is not None

    # a different winner is a different release
    other = package_release({"accuracy": {"uniform": {"4": 0.9}, "msjoe": {"4": 0.5}}}, candidates, clip_dir,
                            **kwargs)
    assert other["winner"] == "uniform" and other["model_tag"] != first["model_tag"]

    # a baseline that won with the question as its query is released with it, and the query
    # source is part of what the release is
    def released_queries(result: dict) -> object:
        return json.loads((Path(bentoml.models.get(result["model_tag"]).path) / "pipeline.json").read_text())["queries"]

    asked = [Candidate("aks", "aks", mllm_dir, queries="question"), Candidate("aks_gen", "aks", mllm_dir)]
    question = package_release({"accuracy": {"aks": {"4": 0.9}, "aks_gen": {"4": 0.5}}}, asked, clip_dir, **kwargs)
    generated = package_release({"accuracy": {"aks": {"4": 0.5}, "aks_gen": {"4": 0.9}}}, asked, clip_dir, **kwargs)
    assert released_queries(question) == "question" and released_queries(generated) is None
    assert question["model_tag"] != generated["model_tag"]


def test_bento_version_follows_what_the_bentofile_packs(tmp_path: Path) -> None:
    (tmp_path / "bento").mkdir()
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    bentofile = tmp_path / "bento" / "bentofile.yaml"
    bentofile.write_text("name: msjoe\ninclude: ['pkg/**/*.py']\nexclude: ['**/__pycache__/**']\n"
                         "python: {requirements_txt: bento/requirements.txt}\n")
    (tmp_path / "bento" / "requirements.txt").write_text("torch==2.0\n")
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "b.py").write_text("stale\n")
    (tmp_path / "notes.py").write_text("not packed\n")
    first = bento_tag_for(bentofile, tmp_path, "release-a")
    name, version = first.split(":")
    assert name == "msjoe" and len(version) == VERSION_LENGTH and int(version, 16) >= 0
    assert bento_tag_for(bentofile, tmp_path, "release-a") == first
    assert bento_tag_for(bentofile, tmp_path, "release-b") != first  # another model inside
    (tmp_path / "notes.py").write_text("still not packed\n")
    (tmp_path / "pkg" / "__pycache__" / "b.py").write_text("excluded\n")
    assert bento_tag_for(bentofile, tmp_path, "release-a") == first
    (tmp_path / "bento" / "requirements.txt").write_text("torch==2.1\n")
    second = bento_tag_for(bentofile, tmp_path, "release-a")
    assert second != first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert bento_tag_for(bentofile, tmp_path, "release-a") not in (first, second)
