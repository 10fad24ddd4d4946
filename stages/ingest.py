"""DVC stage `ingest`: validate the QA file and its videos (params: ingest)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import add_params_argument, params, setup, write_report

from msjoe.ingest import IngestConfig, TooManyRejects, ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qa", type=Path, required=True)
    parser.add_argument("--video-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    add_params_argument(parser)
    args = parser.parse_args()
    log = setup("ingest")
    cfg = IngestConfig.from_mapping(params("ingest", args.params))
    try:
        report = ingest(args.qa, args.video_root, args.out, cfg.max_reject_fraction, cfg.workers, cfg.probe_timeout_s)
    except TooManyRejects as exc:
        write_report(args.report, exc.report.to_dict())
        log.error("%s", exc)
        sys.exit(1)
    write_report(args.report, report.to_dict())


if __name__ == "__main__":
    main()
