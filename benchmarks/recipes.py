"""The reference recipe of every method on every benchmark: each point, and where it comes from.

    python -m benchmarks.recipes            # the table, then every point's source per method and benchmark

Read from the registered methods' reference recipes (:attr:`Method.reference`),
the same settings ``python -m benchmarks.run --protocol reference`` trains with:
schedule, prompt sizes (each method's :attr:`Method.prompt_settings`), backbone,
head initialisation, data pipeline, class order, seed, ImageNet-R split,
sentence encoder, the definitions the reference reports its numbers with, and
the public repository and file each point comes from.
"""
from __future__ import annotations

from typing import List

from avalanche_convprompt.data.pipelines import get_pipeline
from avalanche_convprompt.methods import METHODS

BENCHMARK_NAMES = {"split_cifar100": "CIFAR-100", "split_imagenet_r": "ImageNet-R", "split_cub200": "CUB-200"}
HEAD_INIT = {"trunc_normal": "trunc_normal(0.02), bias 0", "torch_default": "nn.Linear default"}
HEADER = ["method", "benchmark", "backbone", "epochs", "batch", "lr", "schedule", "clip", "prompts", "head init",
          "data", "class order", "seed", "ImageNet-R split", "encoder", "reported acc. / forg.",
          "published test selection", "source"]


def _value(v) -> str:
    if isinstance(v, (tuple, list)):
        return f"{v[0]}-{v[-1]}" if list(v) == list(range(v[0], v[-1] + 1)) else ",".join(map(str, v))
    return str(v)


def _head_init(method) -> str:
    """The head initialisation the method's strategy builds (its class attribute, or the template's default)."""
    return HEAD_INIT[getattr(method.strategy, "head_init", "trunc_normal")]


def recipe_rows() -> List[List[str]]:
    rows = []
    for method in METHODS.values():
        for benchmark, recipe in method.reference.items():
            k = recipe.kwargs
            lr = k["base_lr"] * k["train_mb_size"] / 256
            prompts = ", ".join(f"{name} {_value(k[name])}" for name in method.prompt_settings)
            pipeline = get_pipeline(recipe.pipeline)
            rows.append([
                method.label, BENCHMARK_NAMES.get(benchmark, benchmark), f"`{k['backbone']}`",
                str(k["train_epochs"]), str(k["train_mb_size"]),
                f"{k['base_lr']:g} x batch/256 = {lr:.4g}", k["lr_schedule"],
                "none" if k["clip_grad_norm"] is None else f"{k['clip_grad_norm']:g}",
                prompts or "–", _head_init(method),
                pipeline.name + (", drop_last" if pipeline.drop_last else ""), recipe.class_order, str(recipe.seed),
                recipe.split or "–", f"`{recipe.encoder}`" if recipe.encoder else "–",
                f"{recipe.accuracy} / {recipe.forgetting}", recipe.published_selection or "–", recipe.source,
            ])
    return rows


def recipe_table() -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in recipe_rows()]
    return "\n".join(lines)


def recipe_sources() -> str:
    """Per method and benchmark, every point of the recipe with the repository and file it comes from."""
    out = []
    for method in METHODS.values():
        for benchmark, recipe in method.reference.items():
            out.append(f"{method.label}, {BENCHMARK_NAMES.get(benchmark, benchmark)} ({recipe.source}):")
            out += [f"  - {point}: {where}" for point, where in recipe.sources.items()]
    return "\n".join(out)


def pipeline_legend() -> str:
    return "\n".join(f"- `{name}`: {get_pipeline(name).description}" for name in ("vit", "coda"))


def main() -> None:
    print(recipe_table())
    print("\nData pipelines:\n" + pipeline_legend())


if __name__ == "__main__":
    main()
    print("\nWhere each point comes from:\n" + recipe_sources())
