"""DVC stage `pretrain_mllm`: record the base MLLM the pipeline starts from (params: mllm.name_or_path).

A hub id (paper scale: Qwen/Qwen2.5-VL-7B-Instruct) or a local checkpoint directory (the demo's
shipped base model, weights/demo-mllm, made by `msjoe pretrain-demo-base`). Nothing is trained
or downloaded here; later stages load what the manifest names through the same loader.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import add_params_argument, params, setup, write_report

from msjoe.mllm.pretrain import prepare_mllm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    add_params_argument(parser)
    args = parser.parse_args()
    setup("pretrain_mllm")
    p = params("mllm", args.params)
    write_report(args.report, prepare_mllm(p["name_or_path"], args.out))


if __name__ == "__main__":
    main()
