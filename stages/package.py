"""DVC stage `package`: the winning checkpoint into the BentoML store, a bento, a release record (params: package, inference, evaluate.samplers, embed.fps/max_candidates)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import params, pipeline_settings, setup, write_report, write_timings

from msjoe.package import Candidate, PackageConfig, package_release
from msjoe.store import database_url, git_rev


def _candidate(spec: str, samplers: dict) -> Candidate:
    label, _, dirs = spec.partition("=")
    mllm_dir, _, checkpoint = dirs.partition(",")
    if label not in samplers or not mllm_dir:
        raise SystemExit(f"--candidate {spec!r}: expected LABEL=MLLM_DIR[,SAMPLER_CHECKPOINT] with LABEL in "
                         "evaluate.samplers")
    return Candidate(label, samplers[label]["name"], Path(mllm_dir), Path(checkpoint) if checkpoint else None,
                     dict(samplers[label].get("params") or {}), samplers[label].get("queries"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evaluation", type=Path, required=True, help="reports/evaluate.json")
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--candidate", action="append", required=True, help="LABEL=MLLM_DIR[,SAMPLER_CHECKPOINT] (repeat): what evaluate ran as LABEL")
    parser.add_argument("--bentofile", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    setup("package")
    try:
        cfg = PackageConfig.from_mapping(params("package"))
    except (TypeError, ValueError) as err:
        raise SystemExit(f"params.yaml: {err}") from None
    samplers = params("evaluate")["samplers"]
    # the service samples candidates and asks the MLLM exactly as the pipeline did
    release = {**cfg.release, "pipeline": pipeline_settings()}
    revision = git_rev(Path.cwd())
    result = package_release(
        json.loads(args.evaluation.read_text()),
        [_candidate(spec, samplers) for spec in args.candidate],
        args.clip,
        metric=cfg.metric,
        budget=cfg.budget,
        direction=cfg.direction,
        release_cfg=release,
        bentofile=args.bentofile if cfg.build_bento else None,
        build_ctx=Path.cwd(),
        labels={"git_rev": revision or "unknown", "project": "msjoe"},
        db_url=database_url(Path.cwd()),
    )
    # whether the model and bento were already in this machine's store: run state, not a result
    write_timings("package", {"reused": result.pop("reused")})
    write_report(args.report, result)


if __name__ == "__main__":
    main()
