"""How far could stage 1 go? Fit the MSJoE sampler straight to the training split's evidence.

Not a DVC stage: a diagnostic run beside the DAG on its outputs (``msjoe.rl.evidence_fit``
says why). It asks the frozen base MLLM for each training question's queries (greedy, as
stage 1 does), fits a fresh sampler network (``train_sampler``'s ``sampler`` and
``init_seed``) to the evidence spans, and writes ``sampler.pt`` and ``report.json``. Evaluate it
as any checkpoint, for example in the ``msjoe_stage1`` row::

    python -m tools.evidence_bound --questions data/ingest/questions.parquet --video-root data/world \\
        --features data/features --clip models/clip --mllm models/mllm --out /tmp/evidence-fit
    python -m torch.distributed.run --standalone --nproc_per_node 2 stages/evaluate.py --params <copy of
        params.yaml with the rows and claims to compare> ... --checkpoint msjoe_stage1=/tmp/evidence-fit/sampler.pt

Run it from the repository root (it reuses the RL stages' loading code).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages import _rl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _rl.add_inputs(parser)
    parser.add_argument("--out", type=Path, required=True, help="directory for sampler.pt and report.json")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--questions-per-step", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    log, run = _rl.start("train_sampler", args)

    import numpy as np
    import pandas as pd

    from msjoe.rl.evidence_fit import EvidenceFitConfig, evidence_target, fit_to_evidence
    from msjoe.rl.rollout import FrameCache, query_rollouts, step_seed
    from msjoe.sampling.unet import save_unet

    cfg = EvidenceFitConfig(steps=args.steps, questions_per_step=args.questions_per_step, lr=args.lr,
                            seed=int(run.train.get("seed", 0)), sampler=run.train.get("sampler", "tiny"),
                            init_seed=int(run.train.get("init_seed", 0)))
    pipeline, items, counts = _rl.load_inputs(args, run)
    evidence = pd.read_parquet(args.questions).set_index("qid")["evidence"]
    targets = [evidence_target(item.features.timestamps, evidence.loc[item.qid]) for item in items]
    kept = [i for i, target in enumerate(targets) if target is not None]
    if not kept:
        raise SystemExit(f"{args.questions}: no training question has evidence on its candidate frames")
    queries = query_rollouts(pipeline, [items[i] for i in kept], int(run.train.get("budget", 8)), FrameCache(),
                             temperature=0.0, batch_size=32, seed=lambda b: step_seed(cfg.seed, -1, b))
    model, losses = fit_to_evidence([q.sim for q in queries], [targets[i] for i in kept], cfg)
    save_unet(args.out / "sampler.pt", model)
    tail = losses[-max(1, len(losses) // 10):]
    report = {"questions": counts, "fitted_questions": len(kept), "no_evidence": len(items) - len(kept),
              "first_loss": losses[0], "final_loss": float(np.mean(tail)), "config": cfg.__dict__}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log.info("fitted on %d questions (%d without evidence on their frames): cross-entropy %.3f -> %.3f; %s",
             len(kept), len(items) - len(kept), losses[0], report["final_loss"], args.out / "sampler.pt")


if __name__ == "__main__":
    main()
