"""A method defined outside the package, registered once, goes through every benchmark tool.

The method: one learned key/value prefix per prompted block, shared by all
tasks (the simplest prompt method there is), written here exactly as
``docs/adding_a_method.md`` describes. The runner trains it next to ConvPrompt
on the offline stream (``--import`` a module that registers it), and the report,
the parameter table and the speed comparison pick it up.
"""
import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence

import pytest
import torch
from torch import Tensor, nn

from avalanche_convprompt.methods import (METHODS, Method, PromptedViTTemplate, build_prompted_classifier,
                                          get_method, register_method, unregister_method)
from avalanche_convprompt.models.prompted_vit import PromptedViT

from conftest import tiny_vit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------ the method
class SharedPrefix(nn.Module):
    """One key/value prefix per prompted block, the same for every input and task."""

    needs_query = False          # prompts come inside the single forward pass, no query pass
    ready = True                 # prompts exist from the start

    def __init__(self, prompt_layers: Sequence[int], num_heads: int, head_dim: int, prompt_length: int = 4):
        super().__init__()
        self.prompt_layers = tuple(prompt_layers)
        self.prompt_length = prompt_length
        # (layers, key/value, heads, L, Dh)
        self.prefix = nn.Parameter(0.02 * torch.randn(len(self.prompt_layers), 2, num_heads, prompt_length, head_dim))

    def prompter(self):
        def prefixes(layer: int, cls_token: Tensor):
            i = self.prompt_layers.index(layer)
            batch = cls_token.shape[0]
            return (self.prefix[i, 0].expand(batch, -1, -1, -1), self.prefix[i, 1].expand(batch, -1, -1, -1))
        return prefixes

    def parameter_breakdown(self) -> Dict[str, int]:
        return {"prefix": self.prefix.numel()}


class SharedPrefixStrategy(PromptedViTTemplate):
    """Trains the shared prefix, the newest head and the LayerNorms, with cross-entropy over the new classes."""

    def __init__(self, *, backbone="vit_base_patch16_224.augreg_in21k", pretrained: bool = True,
                 prompt_layers: Sequence[int] = (0, 1), prompt_length: int = 4, **kwargs):
        def make(vit: PromptedViT) -> SharedPrefix:
            return SharedPrefix(prompt_layers, vit.num_heads, vit.head_dim, prompt_length)
        super().__init__(model=build_prompted_classifier(backbone, pretrained, make), **kwargs)

    def trainable_groups(self) -> List[Dict]:
        return [{"params": list(self.net.prompt_module.parameters()), "lr": self.lr},
                {"params": list(self.net.heads.heads[-1].parameters()), "lr": self.lr},
                {"params": self.net.norm_parameters(), "lr": self.norm_lr()}]

    def training_loss(self) -> Tensor:
        return self.training_cross_entropy()


SHARED_PREFIX = Method("shared_prefix", "Shared prefix", SharedPrefixStrategy,
                       offline=dict(prompt_layers=(0, 1, 2, 3), prompt_length=4),
                       prompt_settings=("prompt_layers", "prompt_length"))


@pytest.fixture
def registered():
    register_method(SHARED_PREFIX)
    yield SHARED_PREFIX
    unregister_method(SHARED_PREFIX.name)


# ------------------------------------------------------------------ the registry
def test_registration_adds_the_method_and_refuses_clashes(registered):
    assert get_method("shared_prefix") is SHARED_PREFIX and list(METHODS)[-1] == "shared_prefix"
    register_method(SHARED_PREFIX)                  # the same method again (a re-imported module): fine
    other = Method("convprompt", "Not ConvPrompt", SharedPrefixStrategy)
    with pytest.raises(ValueError, match="a method named 'convprompt' is already registered"):
        register_method(other)
    with pytest.raises(ValueError, match=r"unknown runner options \['replay'\]"):
        Method("x", "X", SharedPrefixStrategy, accepts=("replay",))
    with pytest.raises(ValueError, match="names files"):
        Method("a/b", "X", SharedPrefixStrategy)


def test_an_unregistered_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method 'shared_prefix'.*docs/adding_a_method.md"):
        get_method("shared_prefix")


def test_the_outside_method_trains_exactly_its_parameters(registered):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from conftest import blob_datasets
    strategy = SharedPrefixStrategy(backbone=tiny_vit(), lr=0.01, train_mb_size=8, train_epochs=1, device="cpu",
                                    evaluator=None)
    train, _ = blob_datasets([0, 1, 2, 3], train_per_class=4)
    bm = class_incremental_benchmark({"train": train, "test": train}, num_experiences=2, class_order=[0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    strategy.train(bm.train_stream[1])
    after = dict(strategy.model.named_parameters())
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    assert {n for n in after if n not in before} == {"heads.heads.0.norm.weight", "heads.heads.0.norm.bias",
                                                     "heads.heads.0.linear.weight", "heads.heads.0.linear.bias"}
    assert "prompt_module.prefix" in changed and "backbone.vit.blocks.0.norm1.weight" in changed
    assert all(n == "prompt_module.prefix" or ".norm" in n for n in changed)     # the frozen ViT stays frozen


def test_parameter_table_and_speed_comparison_pick_it_up(registered):
    from benchmarks import parameters, speed
    config = dict(img_size=32, patch_size=8, embed_dim=128, depth=8, num_heads=4, num_classes=0)
    rows = {r["method"]: r for r in parameters.parameter_table(config, tasks=2, classes_per_task=3,
                                                                methods=["convprompt", "shared_prefix"])}
    assert rows["shared_prefix"]["label"] == "Shared prefix"
    assert rows["shared_prefix"]["prompts"] == 2 * 2 * 4 * 4 * 32        # layers (0, 1) x k/v x heads x L x Dh
    assert rows["shared_prefix"]["heads"] == 2 * (3 * 128 + 3 + 2 * 128)  # per task: Linear(128, 3) + LayerNorm(128)
    result = speed.main(["--compare-methods", "--methods", "convprompt", "shared_prefix", "--backbone",
                         "vit_tiny_patch16_224", "--batch", "2", "--rounds", "1", "--tasks", "2", "--device", "cpu"])
    assert set(result["train_step_s"]) == {"convprompt", "shared_prefix"}
    assert result["labels"]["shared_prefix"] == "Shared prefix" and result["backbone_passes"]["shared_prefix"] == 1
    assert all(t > 0 for t in result["train_step_s"].values())


# ------------------------------------------------------------------ the runner, end to end
def test_runner_trains_it_next_to_convprompt_and_reports_both(tmp_path):
    """``--import`` a module that registers the method; run both on the offline stream; read the report."""
    (tmp_path / "my_methods.py").write_text(
        "from avalanche_convprompt.methods import register_method\n"
        "from test_outside_method import SHARED_PREFIX\n"
        "register_method(SHARED_PREFIX)\n")
    out = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), HERE, ROOT]), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "benchmarks.run", "--import", "my_methods", "--methods", "convprompt",
           "shared_prefix", "--seeds", "0", "--experiences", "2", "--epochs", "2", "--train-per-class", "24",
           "--test-per-class", "10", "--allocation", "fixed", "--no-progress", "--output", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {m: json.loads((out / "runs" / f"{m}_seed0.json").read_text()) for m in ("convprompt", "shared_prefix")}
    prefix = records["shared_prefix"]
    assert prefix["label"] == "Shared prefix"
    assert prefix["config"]["recipe"]["prompt_module"] == "SharedPrefix"
    assert prefix["config"]["recipe"]["prompt_layers"] == [0, 1, 2, 3]            # its offline settings were used
    assert prefix["average_accuracy"] > 100 / 8 + 10      # 2 experiences x 4 classes: well above chance (12.5%)
    assert len(prefix["accuracy_matrix"]) == 2 and len(records["convprompt"]["accuracy_matrix"]) == 2
    table = (out / "results.md").read_text()
    assert "| Shared prefix |" in table and "| ConvPrompt |" in table
    assert table.index("| ConvPrompt |") < table.index("| Shared prefix |")      # built-ins first, then the new one
    assert "shared_prefix" in (out / "results.csv").read_text()


def test_runner_refuses_an_unregistered_method_and_a_missing_module(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    base = [sys.executable, "-m", "benchmarks.run", "--output", str(tmp_path), "--seeds", "0"]
    done = subprocess.run(base + ["--methods", "shared_prefix"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "invalid choice: 'shared_prefix'" in done.stderr
    done = subprocess.run(base + ["--import", "no_such_module_here"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "--import no_such_module_here: No module named 'no_such_module_here'" in done.stderr
