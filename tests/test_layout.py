"""The folder layout keeps 0.1's import paths and checkpoints working.

* every name the 0.1 README, examples and scripts imported still imports from its
  0.1 path, and is the very object at its new home;
* every import in today's README and examples resolves;
* checkpoints written by 0.1 (``tests/fixtures/checkpoints_v0_1``, before the
  files moved) load into strategies built by today's code, give the same
  logits, and the run resumes from them.
"""
import ast
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import avalanche_convprompt
from avalanche_convprompt import _moved
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.runs.checkpoint import load_checkpoint, restore_strategy

from fixtures.write_checkpoints_v0_1 import METHODS as FIXTURE_METHODS, build, stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "checkpoints_v0_1")

# What the 0.1 README, examples and scripts imported (read from them with ast at commit 3c7c57d).
IMPORTED_IN_0_1 = {
    "avalanche_convprompt": ["CodaPrompt", "ConvPrompt", "DualPrompt", "FixedAllocation", "JointTraining", "L2P",
                             "SequentialFineTuning", "backbones"],
    "avalanche_convprompt.data": ["CLASS_NAMES", "NUM_CLASSES", "class_shape_pattern"],
    "avalanche_convprompt.data.synthetic_shapes": ["CLASS_NAMES", "PRETRAIN_CLASSES", "STREAM_CLASSES"],
    "avalanche_convprompt.descriptors": ["SHIPPED_SETS", "load_descriptors", "shipped_path"],
    "avalanche_convprompt.descriptors.generate": ["main"],
    "avalanche_convprompt.distributed": ["distribute", "init_from_torchrun", "is_main_process",
                                         "main_process_loggers", "on_main_process", "unwrap", "world_size"],
    "avalanche_convprompt.evaluation": ["default_cl_evaluator", "summarize_run"],
    "avalanche_convprompt.experiment": ["run_stream"],
    "avalanche_convprompt.files": ["ensure_writable_dir", "write_json"],
    "avalanche_convprompt.language_allocation": ["AVERAGE_OVER", "LanguageModelAllocation", "class_descriptors"],
    # 0.1's scripts/pretrain_offline_backbone.py also imported DEFAULT_PRETRAIN_KWARGS and pretrain_offline_backbone
    # from here; in 0.2 that recipe left the package for scripts/offline_backbone_recipe.py (CHANGELOG, 0.2.0)
    "avalanche_convprompt.offline_backbone": ["ASSET_PATH", "OFFLINE_BACKBONE_CONFIG",
                                              "build_offline_backbone", "load_backbone_checkpoint",
                                              "save_backbone_checkpoint", "create_offline_backbone"],
    "avalanche_convprompt.plotting": ["plot_allocation", "plot_runs"],
    "avalanche_convprompt.streams": ["STREAM_NAMES", "make_stream"],
    "avalanche_convprompt.methods": ["METHODS", "REFERENCE_RECIPES", "build_strategy", "reference_recipe",
                                     "resolved_recipe", "get_method", "label", "PROTOCOLS", "CONVPROMPT_BACKBONE",
                                     "BASELINE_BACKBONE", "Method", "Recipe"],
    # the rest of 0.1's module surface that tests and benchmarks used
    "avalanche_convprompt.checkpoint": ["CheckpointPlugin", "CheckpointError", "checkpoint_files", "latest_checkpoint",
                                        "load_checkpoint", "save_checkpoint", "strategy_state", "restore_strategy"],
    "avalanche_convprompt.strategies": ["PromptedViTTemplate", "QueryPromptTemplate", "ConvPrompt", "L2P",
                                        "DualPrompt", "CodaPrompt", "SequentialFineTuning", "JointTraining",
                                        "build_convprompt_model", "build_prompted_classifier", "unwrap",
                                        "PAPER_BACKBONE"],
    "avalanche_convprompt.strategies.base": ["PromptedViTTemplate", "LR_SCHEDULES", "epoch_quarter_cosine"],
    "avalanche_convprompt.conv_prompt_pool": ["ConvPromptPool", "orthonormal_complement"],
    "avalanche_convprompt.l2p_pool": ["L2PPromptPool"],
    "avalanche_convprompt.dualprompt_pool": ["DualPromptPool"],
    "avalanche_convprompt.coda_pool": ["CodaPromptPool"],
    "avalanche_convprompt.prompt_plan": ["PromptPlan", "SELECTIONS", "batch_vote"],
    "avalanche_convprompt.prompted_vit": ["PromptedViT", "prefix_attention", "resolve_backbone"],
    "avalanche_convprompt.model": ["PromptedClassifier"],
    "avalanche_convprompt.heads": ["TaskHeads"],
    "avalanche_convprompt.expansion": ["PromptExpansionPlugin", "FixedAllocation", "Allocation"],
    "avalanche_convprompt.determinism": ["seed_everything", "enable_deterministic_algorithms"],
    "avalanche_convprompt.backbones": ["OFFLINE", "make_backbone", "backbone_image_size"],
}


@pytest.mark.parametrize("module", sorted(IMPORTED_IN_0_1))
def test_every_0_1_import_path_still_works(module):
    mod = importlib.import_module(module)
    missing = [n for n in IMPORTED_IN_0_1[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"
    old = module[len("avalanche_convprompt."):]
    new = _moved.new_location(old) if "." in module else None
    if new is not None:           # a moved module is the same object under both names, so classes are identical
        assert mod is importlib.import_module(new)
        assert mod.__name__ == new and mod.__spec__.name == new      # the alias did not rename the real module


@pytest.mark.parametrize("old, new", [("streams", "avalanche_convprompt.data.streams"),
                                      ("checkpoint", "avalanche_convprompt.runs.checkpoint and "
                                                     "avalanche_convprompt.plugins.checkpointing")])
def test_a_0_1_path_warns_that_it_goes_and_names_the_new_one(old, new, monkeypatch):
    import sys
    monkeypatch.delitem(sys.modules, f"avalanche_convprompt.{old}", raising=False)
    message = f"avalanche_convprompt.{old} is version 0.1's import path and will be removed in 0.3; import {new}"
    with pytest.warns(DeprecationWarning, match="^" + re.escape(message) + " instead$"):
        importlib.import_module(f"avalanche_convprompt.{old}")


def test_split_modules_hold_the_same_objects_as_their_parts():
    from avalanche_convprompt.checkpoint import CheckpointPlugin, load_checkpoint as old_load
    from avalanche_convprompt.distributed import DistributedPromptPlugin, world_size
    from avalanche_convprompt.experiment import FirstIterationTimer, run_stream as old_run_stream
    from avalanche_convprompt.plugins import CheckpointPlugin as NewCheckpointPlugin
    from avalanche_convprompt.plugins import DistributedPromptPlugin as NewPlugin, FirstIterationTimer as NewTimer
    from avalanche_convprompt.runs.distributed import world_size as new_world_size
    assert (CheckpointPlugin, old_load, DistributedPromptPlugin, world_size, FirstIterationTimer, old_run_stream) == \
           (NewCheckpointPlugin, load_checkpoint, NewPlugin, new_world_size, NewTimer, run_stream)


def test_0_1_modules_are_attributes_of_the_package_and_unknown_names_fail():
    assert avalanche_convprompt.streams is importlib.import_module("avalanche_convprompt.data.streams")
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        avalanche_convprompt.not_a_module       # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("avalanche_convprompt.not_a_module")


def test_python_dash_m_on_a_0_1_path_runs_the_moved_command():
    out = subprocess.run([sys.executable, "-m", "avalanche_convprompt.descriptors.generate", "--help"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--classes-file" in out.stdout


def _imports_in(path):
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S) if path.endswith(".md") else [text]
    for block in blocks:
        try:
            tree = ast.parse(block)
        except SyntaxError:           # an excerpt with "..." arguments: its imports are on their own lines
            tree = ast.parse("\n".join(line for line in block.splitlines() if line.startswith(("from ", "import "))))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("avalanche_convprompt"):
                yield node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                yield from ((a.name, []) for a in node.names if a.name.startswith("avalanche_convprompt"))


DOCUMENTS = ["README.md",
             *sorted(f"docs/{f}" for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")),
             *sorted(f"examples/{f}" for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))]


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_import_in_the_readme_docs_and_examples_resolves(path):
    found = list(_imports_in(path))
    for module, names in found:
        mod = importlib.import_module(module)
        assert all(hasattr(mod, n) or importlib.util.find_spec(f"{module}.{n}") for n in names), (module, names)
    assert path.endswith(".md") or found, f"{path} imports nothing from the package?"


# --------------------------------------------------------------------- 0.1 checkpoints
@pytest.mark.parametrize("name", sorted(FIXTURE_METHODS))
def test_checkpoints_written_by_0_1_load_and_resume(name, tmp_path):
    path = os.path.join(FIXTURES, f"{name}_exp002.pt")
    state = load_checkpoint(path)
    assert state["extra"]["version"] == "0.1.0"
    strategy = build(name)
    assert restore_strategy(strategy, state) == 2
    strategy.model.eval()
    with torch.no_grad():
        logits = strategy.model(state["extra"]["probe"])
    torch.testing.assert_close(logits, state["extra"]["probe_logits"], rtol=1e-5, atol=1e-5)

    # the run continues from the 0.1 checkpoint: the two evaluated rows are 0.1's, the third is new
    shutil.copy(path, tmp_path / "exp002.pt")
    resumed = run_stream(build(name), stream(), progress=False, checkpoint_dir=str(tmp_path), resume=True)
    full = state["extra"]["full_accuracy_matrix"]
    assert resumed.accuracy_matrix[:2] == full[:2]
    assert len(resumed.accuracy_matrix) == 3 and len(resumed.accuracy_matrix[2]) == 3
    assert os.path.basename(sorted(os.listdir(tmp_path))[-1]) == "exp003.pt"
