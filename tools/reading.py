"""Where does the demo base MLLM lose its answers: in what it sees, or in reading the answer off
what it says it saw? And how fast can a model of its size learn that reading?

Not a DVC stage: a diagnostic beside ``msjoe pretrain-demo-base``, on the recipe's pre-training
world (same seed and fingerprint-named folder under ``--work-dir``, generated if missing). The
base writes ``Seen: <events>. <answer>X</answer>``; the world knows which events its frames
show, so each reply splits into perception (the list) and reading (list + question -> option).

``measure`` asks the held-out questions on the evidence frame sets of the recipe's own
evaluation (:func:`msjoe.mllm.pretrain.evaluation_frame_sets`) and reports, overall and per
question family:

* ``accuracy`` / ``answer_parse_rate``: the reply as generated (as the recipe's evaluation);
* ``list_exact``: the reply's list is exactly the events shown;
* ``list_implies_right``: its own list implies the right option: the accuracy a perfect reader
  of its own list would reach (the perception ceiling);
* ``follows_own_list``: the answer is the option its own list implies (where it implies one);
* ``reads_own_list``: the option it scores highest after its own reply up to ``<answer>``;
* ``reads_given_list``: the option it scores highest after the *true* list: its reading with
  perfect perception.

``learn`` trains a language model of the demo's kind (fresh, or ``--base``) on text-only
reading examples: the answer prompt without frames, the true list of a random frame set given
as the start of the reply (in context, not scored) and only the implied option scored; then it
reports ``reads_given_list`` on held-out questions. It shows how many steps the reading skill
needs at a given width and depth::

    python -m tools.reading measure --out /tmp/reading-base.json
    python -m tools.reading learn --hidden 128 --layers 3 --steps 1500 --out /tmp/learn-128x3.json

Measured here (2-core AMD EPYC, 400 held-out questions, K = 8, chance 0.25; the README has the
numbers per family): the shipped base answers 0.48, its own lists imply the right option in
0.75, its answer follows its own list in 0.50, and after the true list it picks the right
option in only 0.59. Reading, not perception, is the larger loss. A fresh model of the base's
size (3 layers, width 128) trained on reading alone reads 0.62 after 300 steps of batch 32 and
0.72 after 1500 (15 min); 4 layers of width 256 read 0.62 after 300 steps, at 3.7 times the
cost per step.

Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported late: main() pins the CPU kernels before numpy and torch load
    from msjoe.mllm.build import TinyMLLMConfig
    from msjoe.mllm.demo_base import DemoBaseConfig
    from msjoe.mllm.pretrain import MLLMPretrainConfig, WorldQuestion, WorldVideos
    from msjoe.mllm.sft import SFTExample


def _rates(values: dict[str, list[bool]], questions: Sequence[WorldQuestion]) -> dict[str, Any]:
    """Each measure's mean, overall and per family (over the questions it is defined for)."""
    import numpy as np

    families = sorted({q.category for q in questions})
    out: dict[str, Any] = {}
    for name, flags in values.items():
        kept = [(f, q.category) for f, q in zip(flags, questions, strict=True) if f is not None]
        out[name] = round(float(np.mean([f for f, _ in kept])), 4) if kept else None
        out[f"{name}_per_family"] = {
            fam: round(float(np.mean(v)), 4) if (v := [f for f, c in kept if c == fam]) else None for fam in families
        }
    return out


def reading_report(
    mllm: Any, questions: Sequence[WorldQuestion], videos: WorldVideos, recipe: MLLMPretrainConfig
) -> dict[str, Any]:
    """The measures of the module docstring for ``mllm`` on ``questions`` (evidence frame sets)."""
    from msjoe.episode import answer_prefix, score_options
    from msjoe.mllm import pretrain
    from msjoe.mllm.parsing import OPTION_LETTERS, parse_answer
    from msjoe.world.diagnose import seen_list
    from msjoe.world.reasoning import implied_option

    sets = pretrain.evaluation_frame_sets(questions, videos, recipe)["evidence"]
    conversations = [
        pretrain._answer_messages(q, videos.frames(q.video), idx, recipe.frame_size)
        for q, idx in zip(questions, sets, strict=True)
    ]
    texts = pretrain._generate(mllm, conversations, recipe.answer_max_new_tokens, recipe.eval_batch_size)
    options = [q.options for q in questions]
    shown = [videos.seen(q.video, idx) for q, idx in zip(questions, sets, strict=True)]
    own = [seen_list(t) or [] for t in texts]
    picked = [parse_answer(t, len(q.options), options=q.options) for t, q in zip(texts, questions, strict=True)]
    implied = [implied_option(q.question, q.options, s) for q, s in zip(questions, own, strict=True)]
    implied_letters = [OPTION_LETTERS[i] if i is not None else None for i in implied]
    given_prefixes = [answer_prefix(pretrain.answer_reply("", s)) for s in shown]
    after_given = score_options(mllm, conversations, given_prefixes, options, batch_size=64)
    after_own = score_options(mllm, conversations, [answer_prefix(t) for t in texts], options, batch_size=64)
    rates = _rates(
        {
            "accuracy": [p == q.answer for p, q in zip(picked, questions, strict=True)],
            "answer_parse_rate": [p is not None for p in picked],
            "list_exact": [o == s for o, s in zip(own, shown, strict=True)],
            "list_implies_right": [i == q.answer for i, q in zip(implied_letters, questions, strict=True)],
            "follows_own_list": [None if i is None else p == i for p, i in zip(picked, implied_letters, strict=True)],
            "reads_own_list": [a == q.answer for a, q in zip(after_own, questions, strict=True)],
            "reads_given_list": [a == q.answer for a, q in zip(after_given, questions, strict=True)],
        },
        questions,
    )
    examples = [{"qid": q.qid, "question": q.question, "shown": s, "reply": t}
                for q, s, t in list(zip(questions, shown, texts, strict=True))[:4]]
    return {"questions": len(questions), "k_frames": recipe.k_frames, **rates, "examples": examples}


def reading_examples(
    questions: Sequence[WorldQuestion],
    videos: WorldVideos,
    recipe: MLLMPretrainConfig,
    n_frames: int,
    sets_per_question: int,
    seed: int,
) -> list[tuple[SFTExample, WorldQuestion, str]]:
    """Text-only reading examples with the true list of a random frame set given, and the
    letter of the option it implies; frame sets whose list implies no option are skipped.

    Frame counts are drawn from the recipe's; a set holds the evidence with probability 2/3;
    fillers as in the recipe (:func:`msjoe.mllm.pretrain.frame_set`; videos of ``n_frames``
    frames). Only annotations are read: no video is decoded.
    """
    import numpy as np

    from msjoe.episode import answer_prefix
    from msjoe.mllm import pretrain
    from msjoe.mllm.parsing import OPTION_LETTERS
    from msjoe.mllm.prompts import build_answer_messages
    from msjoe.mllm.sft import SFTExample
    from msjoe.world.reasoning import implied_option

    rng = np.random.default_rng(seed)
    counts = recipe.frame_counts
    out: list[tuple[SFTExample, WorldQuestion, str]] = []
    for q in questions:
        for _ in range(sets_per_question):
            k = int(counts[int(rng.integers(0, len(counts)))])
            idx = pretrain.frame_set(q.evidence_frames, n_frames, k, rng, with_evidence=bool(rng.random() < 2 / 3),
                                     event_frames=videos.event_frames(q.video),
                                     distractor_event_fraction=recipe.distractor_event_fraction)
            seen = videos.seen(q.video, idx)
            index = implied_option(q.question, q.options, seen)
            if index is None:
                continue
            example = SFTExample(build_answer_messages(q.question, q.options, []), f"{q.options[index]}</answer>",
                                 prefix=answer_prefix(pretrain.answer_reply("", seen)))
            out.append((example, q, OPTION_LETTERS[index]))
    return out


def learn_reading(
    cfg: DemoBaseConfig,
    work_dir: Path,
    model: TinyMLLMConfig,
    steps: int,
    learning_rate: float,
    batch_size: int,
    base: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a fresh model of ``model``'s size (or a copy of ``base``) on text-only reading
    examples of the pre-training world's train split for ``steps`` steps; return held-out
    reading accuracy (one example per held-out question) before and after, overall and per
    family. Neither ``base`` nor anything else on disk but a scratch build is written."""
    import tempfile

    import torch

    from msjoe.episode import score_options
    from msjoe.mllm import pretrain
    from msjoe.mllm.build import build_tiny_mllm
    from msjoe.mllm.demo_base import pretrain_world, recipe_threads
    from msjoe.mllm.load import load_mllm
    from msjoe.mllm.sft import supervised_finetune

    world_dir = pretrain_world(cfg, work_dir)
    recipe = cfg.pretrain
    videos = pretrain.WorldVideos(world_dir)
    train = pretrain.load_world_questions(world_dir, "train")
    train += pretrain.extra_train_questions(world_dir, recipe.extra_questions, recipe.seed)
    examples = reading_examples(train, videos, recipe, cfg.world.frames, sets_per_question=8, seed=seed)
    held_out = pretrain.load_world_questions(world_dir, "eval")
    tests = reading_examples(held_out, videos, recipe, cfg.world.frames, sets_per_question=1, seed=seed + 1)

    def reads() -> dict[str, Any]:
        letters = score_options(mllm, [e.messages for e, _, _ in tests], [e.prefix for e, _, _ in tests],
                                [q.options for _, q, _ in tests], batch_size=64)
        return _rates({"reads_given_list": [a == want for a, (_, _, want) in zip(letters, tests, strict=True)]},
                      [q for _, q, _ in tests])

    started = time.perf_counter()
    with recipe_threads(cfg.threads), tempfile.TemporaryDirectory() as scratch:
        if base is None:
            build_tiny_mllm(Path(scratch), pretrain.build_corpus(world_dir, "train"), model, seed=seed)
        mllm = load_mllm(str(base if base is not None else scratch))
        before = reads()
        torch.manual_seed(seed)
        sft = replace(recipe.sft, max_steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                      freeze_vision=True, seed=seed)
        trained = supervised_finetune(mllm, [e for e, _, _ in examples], sft, progress=True)
        after = reads()
        parameters = sum(p.numel() for p in mllm.model.model.language_model.parameters())
    return {
        "base": str(base) if base is not None else None,
        "model": asdict(model) if base is None else None,
        "language_model_parameters": int(parameters),
        "steps": steps, "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed,
        "train_examples": len(examples), "held_out_examples": len(tests),
        "first_loss": trained.losses[0], "final_loss": trained.final_loss,
        "train_seconds": round(trained.seconds, 1), "seconds": round(time.perf_counter() - started, 1),
        "before": before, "after": after,
    }


def measure(base: Path, cfg: DemoBaseConfig, work_dir: Path) -> dict[str, Any]:
    """:func:`reading_report` for the checkpoint ``base`` on the pre-training world's held-out
    questions (the recipe's evaluation settings)."""
    from msjoe.mllm import pretrain
    from msjoe.mllm.demo_base import pretrain_world, recipe_threads
    from msjoe.mllm.load import load_mllm

    world_dir = pretrain_world(cfg, work_dir)
    started = time.perf_counter()
    with recipe_threads(cfg.threads):
        report = reading_report(load_mllm(str(base)), pretrain.load_world_questions(world_dir, "eval"),
                                pretrain.WorldVideos(world_dir), cfg.pretrain)
    return {"base": str(base), "world": cfg.world_fingerprint(), **report,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    from msjoe.cpu_kernels import pin_cpu_kernels

    pin_cpu_kernels()  # before torch loads, as in msjoe pretrain-demo-base
    from msjoe.mllm.demo_base import DemoBaseConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/demo-base"),
                        help="where the pre-training world is (or is generated)")
    parser.add_argument("--out", type=Path, required=True, help="the report (JSON)")
    commands = parser.add_subparsers(dest="command", required=True)
    measured = commands.add_parser("measure", help="split a base checkpoint's answers into seeing and reading")
    measured.add_argument("--base", type=Path, default=Path("weights/demo-mllm"))
    learning = commands.add_parser("learn", help="train reading alone (text only) and measure it")
    learning.add_argument("--base", type=Path, default=None, help="start from this checkpoint (default: a fresh model)")
    learning.add_argument("--hidden", type=int, default=128, help="width of a fresh model")
    learning.add_argument("--layers", type=int, default=3, help="depth of a fresh model")
    learning.add_argument("--steps", type=int, default=1500)
    learning.add_argument("--lr", type=float, default=2e-3)
    learning.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cfg = DemoBaseConfig()
    if args.command == "measure":
        report = measure(args.base, cfg, args.work_dir)
    else:
        model = replace(cfg.pretrain.model, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                        num_layers=args.layers)
        report = learn_reading(cfg, args.work_dir, model, args.steps, args.lr, args.batch_size, base=args.base)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, (dict, list))}, indent=2))
    if "after" in report:
        print(json.dumps({"before": report["before"], "after": report["after"]}, indent=2))


if __name__ == "__main__":
    main()
