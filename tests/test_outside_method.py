"""A method defined outside the package, registered once, goes through every benchmark tool.

The method: one learned key/value prefix per prompted block, shared by all
tasks (the simplest prompt method there is), written here exactly as
``docs/adding_a_method.md`` describes. The runner trains it next to ConvPrompt
on the offline stream (``--import`` a module that registers it), and the report,
the parameter table and the speed comparison pick it up.
"""
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Sequence

import pytest
import torch
from avalanche.core import SupervisedPlugin
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

    def __init__(self, prompt_layers: Sequence[int], num_heads: int, head_dim: int, prompt_length: int = 4,
                 init_scale: float = 0.02):
        super().__init__()
        self.prompt_layers = tuple(prompt_layers)
        self.prompt_length = prompt_length
        self.init_scale = init_scale          # a setting of this method only: its Method declares it for records
        # (layers, key/value, heads, L, Dh)
        self.prefix = nn.Parameter(init_scale * torch.randn(len(self.prompt_layers), 2, num_heads, prompt_length, head_dim))

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
                       prompt_settings=("prompt_layers", "prompt_length"), record_settings=("init_scale",))


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


def test_records_keep_the_settings_each_method_declares(registered):
    """resolved_recipe reads the declared settings from the strategy or its prompt module, a subclass's too."""
    from avalanche_convprompt.methods import resolved_recipe

    class Subclass(SharedPrefixStrategy):
        pass

    for cls in (SharedPrefixStrategy, Subclass):
        recipe = resolved_recipe(cls(backbone=tiny_vit(), prompt_layers=(0,), prompt_length=3, device="cpu",
                                     evaluator=None))
        assert (recipe["prompt_layers"], recipe["prompt_length"], recipe["init_scale"]) == ([0], 3, 0.02)
    register_method(Method(SHARED_PREFIX.name, SHARED_PREFIX.label, SharedPrefixStrategy,
                           record_settings=("init_scael",)), replace=True)
    with pytest.raises(ValueError, match=r"method 'shared_prefix' declares the setting 'init_scael' .*neither "
                                             r"SharedPrefixStrategy nor its prompt module SharedPrefix has"):
        resolved_recipe(SharedPrefixStrategy(backbone=tiny_vit(), device="cpu", evaluator=None))


def test_the_docs_one_pass_example_builds_trains_and_records_its_settings():
    """The complete example of docs/adding_a_method.md, run exactly as written there."""
    from avalanche_convprompt.methods import resolved_recipe

    with open(os.path.join(ROOT, "docs", "adding_a_method.md"), encoding="utf-8") as f:
        text = f.read()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class SharedPrefix(nn.Module)" in b)
    assert "shared_prefix" not in METHODS
    namespace = {"__name__": "my_methods"}
    try:
        exec(compile(block, "docs/adding_a_method.md", "exec"), namespace)
        assert METHODS["shared_prefix"].strategy is namespace["SharedPrefixStrategy"]
        strategy = namespace["SharedPrefixStrategy"](backbone=tiny_vit(), prompt_layers=(0,), prompt_length=3,
                                                     device="cpu", evaluator=None)
        recipe = resolved_recipe(strategy)
        assert (recipe["prompt_module"], recipe["prompt_layers"], recipe["prompt_length"]) == ("SharedPrefix", [0], 3)
    finally:
        METHODS.pop("shared_prefix", None)


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
    """``--import`` a module that registers the method; run both on the offline stream; read the report.

    Run as a user outside the checkout would: the installed ``convprompt-run`` command, from a folder
    holding the module (found there, with no PYTHONPATH to it), writing under that folder's ``results/``.
    """
    (tmp_path / "my_methods.py").write_text(
        "from avalanche_convprompt.methods import register_method\n"
        "from test_outside_method import SHARED_PREFIX\n"
        "register_method(SHARED_PREFIX)\n")
    out = tmp_path / "results" / "benchmark_synthetic"             # the default output, under the current folder
    env = dict(os.environ, PYTHONPATH=HERE, HF_HUB_OFFLINE="1")      # HERE: for `from test_outside_method import`
    command = os.path.join(os.path.dirname(sys.executable), "convprompt-run")
    cmd = [command, "--import", "my_methods", "--methods", "shared_prefix", "convprompt",
           "--seeds", "0", "--experiences", "2", "--epochs", "2", "--train-per-class", "24",
           "--test-per-class", "10", "--allocation", "fixed", "--no-progress"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {m: json.loads((out / "runs" / f"{m}_seed0.json").read_text()) for m in ("convprompt", "shared_prefix")}
    prefix = records["shared_prefix"]
    assert prefix["label"] == "Shared prefix"
    assert prefix["config"]["recipe"]["prompt_module"] == "SharedPrefix"
    assert prefix["config"]["recipe"]["prompt_layers"] == [0, 1, 2, 3]            # its offline settings were used
    assert prefix["config"]["recipe"]["prompt_length"] == 4                        # Method.prompt_settings
    assert prefix["config"]["recipe"]["init_scale"] == 0.02                        # Method.record_settings
    assert "kernel_size" in records["convprompt"]["config"]["recipe"]              # each method its own settings
    assert "kernel_size" not in prefix["config"]["recipe"]
    assert prefix["average_accuracy"] > 100 / 8 + 10      # 2 experiences x 4 classes: well above chance (12.5%)
    assert len(prefix["accuracy_matrix"]) == 2 and len(records["convprompt"]["accuracy_matrix"]) == 2
    table = (out / "results.md").read_text()
    assert "| Shared prefix |" in table and "| ConvPrompt |" in table
    assert table.index("| Shared prefix |") < table.index("| ConvPrompt |")      # the order of --methods
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


# ------------------------------------------------------------------ no silent no-ops
class Forgetful(SharedPrefix):
    """The shared prefix with its ``prompt_layers`` lost: the backbone would run unprompted."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.prompt_layers
        self.layers = (0, 1)


def test_a_module_without_prompt_layers_or_with_none_is_refused_at_build():
    with pytest.raises(AttributeError, match=r"^Forgetful has no prompt_layers: declare the blocks it "
                                             r"prefix-prompts as a tuple of block indices, or prompt_layers = \(\)"):
        build_prompted_classifier(tiny_vit(), False, lambda vit: Forgetful((0, 1), vit.num_heads, vit.head_dim))
    with pytest.raises(ValueError, match=r"^SharedPrefix\.prompt_layers is empty and the module is one-pass"):
        build_prompted_classifier(tiny_vit(), False, lambda vit: SharedPrefix((), vit.num_heads, vit.head_dim))
    # the declared layers become the backbone's: the prompts really change the features
    net = build_prompted_classifier(tiny_vit(), False, lambda vit: SharedPrefix((0, 1), vit.num_heads, vit.head_dim))
    assert net.backbone.prompt_layers == (0, 1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net.backbone(x, net.prompt_module.prompter()), net.backbone(x))


class TwoPassPlan(nn.Module):
    """A query-based module whose plan prefixes blocks ``planned``, declaring ``declared``."""

    needs_query = True
    ready = True

    def __init__(self, declared, planned, num_heads, embed_dim, prepend=False):
        super().__init__()
        self.prompt_layers, self.planned, self.num_heads, self.prepend = tuple(declared), planned, num_heads, prepend
        self.prefix = nn.Parameter(0.02 * torch.randn(2, 4, embed_dim))

    def prompter(self, query: Tensor, task=None):
        from avalanche_convprompt.models.prompt_plan import PromptPlan
        batch = query.shape[0]
        prefixes = {b: self.prefix.expand(batch, -1, -1, -1) for b in self.planned}
        prepend = self.prefix[0].expand(batch, -1, -1) if self.prepend else None
        return PromptPlan(num_heads=self.num_heads, prefixes=prefixes, prepend=prepend)


@pytest.mark.parametrize("declared, planned, prepend, message", [
    ((0,), (0, 2), False, r"^TwoPassPlan's PromptPlan has prefixes for blocks \[2\], which are not among the "
                          r"backbone's prompted layers \[0\]: list every block it prompts in "
                          r"TwoPassPlan\.prompt_layers$"),
    ((), (), False, r"^TwoPassPlan's PromptPlan carries neither prefixes nor prepended tokens: its prompts would "
                    r"change nothing$"),
    ((0, 1), (0, 1), False, None),
    ((), (), True, None),
])
def test_a_plan_outside_the_prompted_layers_is_refused_at_the_first_forward(declared, planned, prepend, message):
    net = build_prompted_classifier(tiny_vit(), False,
                                    lambda vit: TwoPassPlan(declared, planned, vit.num_heads, vit.embed_dim, prepend))
    x = torch.rand(2, 3, 32, 32)
    if message is None:                              # declared as planned: it runs and the prompts count
        net.eval()
        with torch.no_grad():
            prompted = net.backbone(x, **_plan_inputs(net, x))
            assert not torch.allclose(prompted, net.backbone(x))
        return
    with pytest.raises(ValueError, match=message):
        net(x)


def _plan_inputs(net, x):
    plan = net.prompt_module.prompter(net.query(x))
    net.check_plan(plan)
    return {"prompter": plan if plan.prefixes else None, "prepend": plan.prepend}


# ------------------------------------------------------------------ the two-pass example, trained and resumed
def _two_pass_run(tmp_path, resume=False, plugins=()):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from conftest import blob_datasets
    from two_pass_method import TaskPrefixStrategy
    from avalanche_convprompt.evaluation import default_cl_evaluator
    from avalanche_convprompt.runs import run_stream
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=24, test_per_class=10, seed=0)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[0, 1, 2, 3])
    torch.manual_seed(0)
    strategy = TaskPrefixStrategy(backbone=tiny_vit(0), pretrained=False, prompt_layers=(0, 1, 2), lr=0.05,
                                  train_mb_size=8, train_epochs=3, device="cpu", plugins=list(plugins),
                                  evaluator=default_cl_evaluator(loggers=[]))
    summary = run_stream(strategy, bm, progress=False, checkpoint_dir=str(tmp_path), resume=resume)
    return strategy, summary, bm


def test_the_two_pass_example_trains_its_prompts_and_resumes_without_a_load_hook(tmp_path):
    # measured: accuracy matrix [[80, 0], [90, 40]], 65% on 4 classes (chance 25%)
    seen = {}

    class Watch(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            seen[strategy.clock.train_exp_counter] = [p.detach().clone() for p in strategy.net.prompt_module.prefixes]

    strategy, full, bm = _two_pass_run(tmp_path, plugins=[Watch()])
    net = strategy.net.eval()
    assert len(net.prompt_module.prefixes) == 2 and full.average_accuracy > 25 + 20
    # the second experience trained its own prefix and left the first one as it was
    first, second = net.prompt_module.prefixes
    assert torch.equal(first, seen[1][0]) and not torch.equal(second, seen[1][1])
    assert not torch.equal(first, seen[0][0])                      # ... which the first experience had trained
    # the prompts reach the logits: the same heads on the unprompted features score differently
    x = torch.stack([bm.test_stream[1].dataset[i][0] for i in range(len(bm.test_stream[1].dataset))])
    with torch.no_grad():
        assert (net(x) - net.heads(net.backbone(x))).abs().max() > 1e-3
    # resume after the first experience: the template grows the module before loading (no hook in the module)
    os.remove(tmp_path / "exp002.pt")
    resumed, again, _ = _two_pass_run(tmp_path, resume=True)
    assert again.accuracy_matrix == full.accuracy_matrix
    for (name, a), b in zip(strategy.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
