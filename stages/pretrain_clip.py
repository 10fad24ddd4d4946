"""DVC stage `pretrain_clip`: resolve (paper scale) or learn (demo scale) the frozen CLIP (params: clip)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import deterministic, params, setup, write_report, write_timings

from msjoe.clip.prepare import ClipSettings, prepare_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world", type=Path, help="demo world directory (training data and recall check)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--loss-plot", type=Path, required=True)
    args = parser.parse_args()
    setup("pretrain_clip")
    cfg = ClipSettings.from_mapping(params("clip"))
    deterministic(cfg.threads, cfg.train.seed)
    report = prepare_clip(cfg.model, cfg.pretrained, args.out, args.world, cfg.train, recall_k=cfg.recall_k)
    curve = report.pop("loss_curve", [])
    args.loss_plot.parent.mkdir(parents=True, exist_ok=True)
    args.loss_plot.write_text(json.dumps([{"step": i, "loss": loss} for i, loss in enumerate(curve)]))
    write_timings("pretrain_clip", (report.get("training") or {}).pop("timings", {}))
    write_report(args.report, report)


if __name__ == "__main__":
    main()
