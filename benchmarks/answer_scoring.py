"""What reading unnamed replies as options costs, against the answer turns it follows (prints, never asserts).

    python benchmarks/answer_scoring.py [--samplers uniform,aks,clip_topk_gen,msjoe_untrained]
        [--budget 8] [--batch-size 64] [--threads 1] [--mllm models/mllm]

Evaluation and serving answer greedily, then give a reply that names no option the option the MLLM
scores highest after it (:func:`msjoe.episode.resolve_answers`). On the demo's eval questions, with
the frames each sampler chose in ``reports/predictions.parquet`` (needs the outputs of ``dvc repro``),
one run measures:

* the answer turns (generation) of every question;
* the option scoring of the replies that named no option, as shipped (``MLLM.score_completions``:
  each prompt and the options' common leading tokens run once, then only the differing tokens);
* the same scoring pair by pair (``MLLM.sequence_log_probs`` on every (conversation, completion)),
  the baseline the shared-prefix scoring replaces, and whether both choose the same options.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from msjoe import episode
from msjoe.mllm.manifest import load_prepared_mllm
from msjoe.mllm.parsing import OPTION_LETTERS
from msjoe.rl.rollout import FrameCache, load_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default="uniform,aks,clip_topk_gen,msjoe_untrained")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mllm", type=Path, default=Path("models/mllm"))
    parser.add_argument("--questions", type=Path, default=Path("data/ingest/questions.parquet"))
    parser.add_argument("--video-root", type=Path, default=Path("data/world"))
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--predictions", type=Path, default=Path("reports/predictions.parquet"))
    parser.add_argument("--answer-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    items, _ = load_items(pd.read_parquet(args.questions), args.video_root, args.features, split="eval")
    by_qid = {item.qid: item for item in items}
    predictions = pd.read_parquet(args.predictions)
    rows = predictions[(predictions["budget"] == args.budget) & predictions["sampler"].isin(args.samplers.split(","))]
    mllm = load_prepared_mllm(args.mllm)
    frames = FrameCache()
    conversations, options = [], []
    for row in rows.itertuples():
        item = by_qid[row.qid]
        conversations.append(episode.answer_conversation(
            item.question, item.options, frames.frames(item, np.asarray(row.frames)), answer_size=args.answer_size))
        options.append(item.options)

    started = time.perf_counter()
    turns = episode.answer_turns(mllm, conversations, options, max_new_tokens=64, batch_size=args.batch_size)
    turns_s = time.perf_counter() - started
    todo = [i for i, turn in enumerate(turns) if turn.letter is None]

    started = time.perf_counter()
    resolved = episode.resolve_answers(mllm, conversations, options, turns, batch_size=args.batch_size)
    shared_s = time.perf_counter() - started

    started = time.perf_counter()
    pairs = [(i, f"{episode.answer_prefix(turns[i].text)}{option}</answer>") for i in todo for option in options[i]]
    sums: list[float] = []
    with torch.no_grad():
        for start in range(0, len(pairs), args.batch_size):
            chunk = pairs[start : start + args.batch_size]
            sums += mllm.sequence_log_probs([conversations[i] for i, _ in chunk], [t for _, t in chunk]).sums().tolist()
    pairwise_s = time.perf_counter() - started
    pairwise, at = [], 0
    for i in todo:
        scores = sums[at : at + len(options[i])]
        pairwise.append(OPTION_LETTERS[int(np.argmax(scores))])
        at += len(options[i])
    same = sum(resolved[i].letter == letter for i, letter in zip(todo, pairwise, strict=True))

    print(f"{len(turns)} answer turns (K = {args.budget}, samplers {args.samplers}, {args.threads} thread(s))")
    print(f"  answer turns (generation)                {turns_s:7.1f} s")
    print(f"  option scoring, shared prefix (shipped)  {shared_s:7.1f} s   {len(todo)} replies named no option"
          f" ({len(todo) / len(turns):.0%})   ratio to the turns {shared_s / turns_s:.2f}")
    print(f"  option scoring, pair by pair (baseline)  {pairwise_s:7.1f} s   ratio to the shared prefix"
          f" {pairwise_s / shared_s:.2f}   same choice {same}/{len(todo)}")


if __name__ == "__main__":
    main()
