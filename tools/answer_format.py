"""Could the demo base MLLM answer with the option's letter? Continue its training in another
answer format and measure it on the pre-training world's held-out questions.

Not a DVC stage: a diagnostic beside ``msjoe pretrain-demo-base``. The prompt asks for a letter
(``<answer>B</answer>``), but the shipped demo base writes the option's text, because the tiny
model did not learn to bind an option's content to its letter; a reply whose text is not an
option then counts as unparsed (``answer_parse_rate`` 0.60-0.94 on the demo DAG). This tool
measures that trade directly: it loads a base checkpoint, continues the recipe's last phase
(both turns mixed, vision tower frozen) on freshly drawn answer-turn examples in
``--format``, and runs the recipe's evaluation (:func:`msjoe.mllm.pretrain.evaluate_mllm`).
The pre-training world is the recipe's (same seed and fingerprint-named folder under
``--work-dir`` as ``msjoe pretrain-demo-base``, generated if missing)::

    python -m tools.answer_format --base weights/demo-mllm --work-dir .cache/demo-base \\
        --format letter --steps 1000 --lr 1e-3 --out /tmp/letter-1000

Measured from the shipped base (2-core AMD EPYC; 400 held-out questions, K = 8; chance 0.25):

========================  ============  ===========================  ===============
run                       parse rate    accuracy on evidence frames  ``Seen:`` exact
========================  ============  ===========================  ===============
shipped (option text)     0.83          0.48                         0.40
letter, 1000 steps, 1e-3  1.00          0.26                         0.40
letter, 4000 steps, 2e-3  1.00          0.22                         0.50
========================  ============  ===========================  ===============

Letters always parse, and the events the model lists even improve, but the letter it picks is
at chance (uniform frames 0.24-0.25, no evidence 0.27): within 4000 steps (19 min) the
3-layer model does not learn the lookup from the event it reads to the letter in front of that
option's line. So the demo keeps the option text and its parse rate.

Why: the base hardly reads the options at all. The report's ``options_swapped``
(:func:`options_sensitivity`; ``--steps 0`` measures the base as it is) asks each held-out
question on the same evidence frames with the next same-family question's options: the shipped
base keeps its answer in 0.96 of the replies, and names one of the options it was shown in
0.405, one of its own question's options, which it was not shown, in 0.81. It answers from the
frames and the question; an answer is an option only when what it read is one.

Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported late: main() pins the CPU kernels before numpy and torch load
    from msjoe.mllm.demo_base import DemoBaseConfig


def continue_in_format(
    base: Path,
    cfg: DemoBaseConfig,
    work_dir: Path,
    answer_format: str,
    steps: int,
    learning_rate: float,
    seed: int,
    out: Path | None = None,
) -> dict[str, Any]:
    """Continue ``base``'s training for ``steps`` steps (0: none, measure ``base`` as it is) on
    ``cfg``'s pre-training world with answers in ``answer_format``, evaluate, save the model to
    ``out`` (when given) and return the report. ``base`` itself is only read.

    ``seed`` draws the new answer-turn frame sets and the batch order; it should differ from the
    recipe's, so the continued pass sees sets the base was not trained on.
    """
    import numpy as np
    import torch

    from msjoe.mllm import pretrain
    from msjoe.mllm.demo_base import pretrain_world, recipe_threads
    from msjoe.mllm.load import load_mllm
    from msjoe.mllm.sft import supervised_finetune

    world_dir = pretrain_world(cfg, work_dir)
    recipe = replace(cfg.pretrain, answer_format=answer_format)
    started = time.perf_counter()
    with recipe_threads(cfg.threads):
        mllm = load_mllm(str(base))
        examples: dict[str, int] = {}
        trained = None
        if steps:
            videos = pretrain.WorldVideos(world_dir)
            train = pretrain.load_world_questions(world_dir, "train")
            train += pretrain.extra_train_questions(world_dir, recipe.extra_questions, recipe.seed)
            queries = pretrain.query_examples(train, videos, recipe)
            answers = pretrain.answer_examples(train, videos, recipe, np.random.default_rng(seed))
            videos._frames.clear()
            examples = {"query": len(queries), "answer": len(answers)}
            torch.manual_seed(seed)
            sft = replace(recipe.sft, max_steps=steps, learning_rate=learning_rate, freeze_vision=True, seed=seed)
            trained = supervised_finetune(mllm, queries + [a.example for a in answers], sft, progress=False)
        held_out = pretrain.load_world_questions(world_dir, "eval")
        evaluation = pretrain.evaluate_mllm(mllm, held_out, pretrain.WorldVideos(world_dir), recipe)
        evaluation["options_swapped"] = options_sensitivity(mllm, held_out, pretrain.WorldVideos(world_dir), recipe)
        if out is not None:
            mllm.save_pretrained(out)
    report = {
        "base": str(base),
        "answer_format": answer_format,
        "steps": steps,
        "learning_rate": learning_rate,
        "seed": seed,
        "world": cfg.world_fingerprint(),
        "examples": examples,
        "first_loss": trained.losses[0] if trained else None,
        "final_loss": trained.final_loss if trained else None,
        "seconds": round(time.perf_counter() - started, 2),
        "eval": evaluation,
        "recipe": asdict(recipe),
    }
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def options_sensitivity(mllm: Any, questions: list[Any], videos: Any, recipe: Any) -> dict[str, float]:
    """Does the answer depend on the options shown? Each question is asked on the evidence frame
    set of the recipe's own evaluation (:func:`msjoe.mllm.pretrain.evaluation_frame_sets`)
    twice: with its own options, and with those of the next question of the same family.
    Raises ``ValueError`` for a family of one question.

    ``same_answer``: share of replies whose answer (from ``<answer>`` on) is the same both times.
    ``names_shown_option``: the swapped reply's answer is one of the options it was shown;
    ``names_own_option``: it is one of the question's own options, which it was not shown.
    A model that reads the options answers among those it sees; one that answers from the frames
    and the question alone keeps its answer and names its own question's options.
    """
    import numpy as np

    from msjoe.mllm import pretrain
    from msjoe.mllm.parsing import parse_answer

    sets = pretrain.evaluation_frame_sets(questions, videos, recipe)["evidence"]
    families: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        families.setdefault(q.category, []).append(i)
    if lonely := sorted(family for family, members in families.items() if len(members) < 2):
        raise ValueError(f"no other question to take options from in famil{'ies' if len(lonely) > 1 else 'y'} {lonely}")
    donor = {i: members[(j + 1) % len(members)] for members in families.values() for j, i in enumerate(members)}

    def replies(options: list[tuple[str, ...]]) -> list[str]:
        conversations = [
            pretrain._answer_messages(replace(q, options=o), videos.frames(q.video), idx, recipe.frame_size)
            for q, o, idx in zip(questions, options, sets, strict=True)
        ]
        return pretrain._generate(mllm, conversations, recipe.answer_max_new_tokens, recipe.eval_batch_size)

    shown = [questions[donor[i]].options for i in range(len(questions))]
    own, swapped = replies([q.options for q in questions]), replies(shown)
    return {
        "questions": len(questions),
        "same_answer": float(np.mean([a.partition("<answer>")[2] == b.partition("<answer>")[2]
                                      for a, b in zip(own, swapped, strict=True)])),
        "names_shown_option": float(np.mean([parse_answer(t, len(o), options=o) is not None
                                             for t, o in zip(swapped, shown, strict=True)])),
        "names_own_option": float(np.mean([parse_answer(t, len(q.options), options=q.options) is not None
                                           for t, q in zip(swapped, questions, strict=True)])),
    }


def main() -> None:
    from msjoe.cpu_kernels import pin_cpu_kernels

    pin_cpu_kernels()  # before torch loads, as in msjoe pretrain-demo-base
    from msjoe.mllm.demo_base import DemoBaseConfig
    from msjoe.mllm.pretrain import ANSWER_FORMATS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("weights/demo-mllm"), help="base checkpoint directory")
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/demo-base"),
                        help="where the pre-training world is (or is generated)")
    parser.add_argument("--format", choices=ANSWER_FORMATS, default="letter")
    parser.add_argument("--steps", type=int, default=1000, help="0: measure the base as it is")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True, help="directory for the continued model and report.json")
    args = parser.parse_args()
    report = continue_in_format(args.base, DemoBaseConfig(), args.work_dir, args.format, args.steps, args.lr,
                                args.seed, args.out)
    summary = {k: v for k, v in report["eval"].items() if isinstance(v, float) or k == "options_swapped"}
    print(json.dumps({"steps": report["steps"], "final_loss": report["final_loss"], **summary}, indent=1))


if __name__ == "__main__":
    main()
