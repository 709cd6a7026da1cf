"""The reference recipe of every method on every benchmark, as a Markdown table.

    python -m benchmarks.recipes            # the table the README shows

Read from the registered methods' reference recipes (:attr:`Method.reference`),
the same settings ``python -m benchmarks.run --protocol reference`` trains with;
each method's :attr:`Method.prompt_settings` name the prompt sizes shown.
"""
from __future__ import annotations

from typing import List

from avalanche_convprompt.methods import METHODS

BENCHMARK_NAMES = {"split_cifar100": "CIFAR-100", "split_imagenet_r": "ImageNet-R", "split_cub200": "CUB-200"}


def _value(v) -> str:
    if isinstance(v, (tuple, list)):
        return f"{v[0]}-{v[-1]}" if list(v) == list(range(v[0], v[-1] + 1)) else ",".join(map(str, v))
    return str(v)


def recipe_rows() -> List[List[str]]:
    rows = []
    for method in METHODS.values():
        for benchmark, recipe in method.reference.items():
            k = recipe.kwargs
            lr = k["base_lr"] * k["train_mb_size"] / 256
            prompts = ", ".join(f"{name} {_value(k[name])}" for name in method.prompt_settings)
            rows.append([
                method.label, BENCHMARK_NAMES.get(benchmark, benchmark), f"`{k['backbone']}`",
                str(k["train_epochs"]), str(k["train_mb_size"]),
                f"{k['base_lr']:g} x batch/256 = {lr:.4g}", k["lr_schedule"],
                "none" if k["clip_grad_norm"] is None else f"{k['clip_grad_norm']:g}",
                prompts or "–", recipe.published_selection or "–", recipe.source,
            ])
    return rows


def recipe_table() -> str:
    header = ["method", "benchmark", "backbone", "epochs", "batch", "lr", "schedule", "clip", "prompts",
              "published test selection", "source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in recipe_rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(recipe_table())
