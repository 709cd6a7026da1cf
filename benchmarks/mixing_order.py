"""Time ConvPrompt's prompt path alone (no grad, ViT-B/16 shapes, 50 generators) in both mixing orders.

Why: the pool picks "kernels" (mix each sample's kernels, convolve once per
sample) or "outputs" (convolve every generator once, mix the outputs) from
crossovers measured on one thread; this checks the choice at another thread
count. Interleaved rounds, medians, milliseconds::

    python -m benchmarks.mixing_order --threads 2
"""
import argparse
import statistics
import time
import warnings

import torch

from avalanche_convprompt.methods.convprompt.prompt_pool import ConvPromptPool

EMBED = 768


def vit_b_pool(tasks: int = 10, generators_per_task: int = 5) -> ConvPromptPool:
    """ConvPrompt's pool for ViT-B/16 (blocks 0..6, 12 heads of 64, L 20, k 17) grown to 50 generators."""
    torch.manual_seed(0)
    pool = ConvPromptPool(tuple(range(7)), 12, 64, EMBED, prompt_length=20, kernel_size=17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the key space cannot hold 10 x 5 keys orthogonally: expected
        for _ in range(tasks):
            pool.add_generators(generators_per_task)
    return pool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pool = vit_b_pool()
    rows = {}
    for batch in args.batches:
        queries = [torch.randn(batch, EMBED) for _ in pool.prompt_layers]
        times = {"outputs": [], "kernels": []}
        for _ in range(args.rounds):
            for order in times:
                pool.mixing = order
                started = time.perf_counter()
                with torch.no_grad():
                    prompter = pool.prompter()
                    for block, q in zip(pool.prompt_layers, queries):
                        prompter(block, q)
                times[order].append(time.perf_counter() - started)
        rows[batch] = {order: 1000 * statistics.median(t) for order, t in times.items()}
        print(f"{args.threads} threads, batch {batch}: " +
              ", ".join(f"{order} {ms:.1f} ms" for order, ms in rows[batch].items()))
    return rows


if __name__ == "__main__":
    main()
