"""Default arguments fit any backbone depth: the paper's on ViT-B, working ones on the shipped offline ViT."""
import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin

from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning
from avalanche_convprompt.data.offline_backbone import create_offline_backbone
from avalanche_convprompt.methods import build_convprompt_model, resolved_recipe
from avalanche_convprompt.methods.convprompt import default_prompt_layers

from conftest import blob_datasets

class Snapshot(SupervisedPlugin):
    """The optimised parameters as the experience's training starts (after the model grew)."""

    def before_training_epoch(self, strategy, **kwargs):
        self.before = [p.detach().clone() for g in strategy.optimizer.param_groups for p in g["params"]]


TRAINING = dict(train_mb_size=8, train_epochs=1, eval_mb_size=16, device="cpu", evaluator=None)


def test_the_default_prompt_layers_are_the_papers_share_of_the_depth():
    assert default_prompt_layers(12) == (0, 1, 2, 3, 4, 5, 6)        # the paper's blocks on ViT-B, exactly
    assert default_prompt_layers(6) == (0, 1, 2, 3)                  # the shipped offline backbone
    assert {d: len(default_prompt_layers(d)) for d in (1, 2, 3, 4, 24)} == {1: 1, 2: 2, 3: 2, 4: 3, 24: 14}
    with pytest.raises(ValueError, match="no blocks"):
        default_prompt_layers(0)


def test_on_vit_b_the_defaults_are_the_published_recipe_unchanged():
    vit_b = dict(backbone="vit_base_patch16_224", pretrained=False, device="cpu", evaluator=None)
    default = resolved_recipe(ConvPrompt(**vit_b))
    assert default == resolved_recipe(ConvPrompt(prompt_layers=tuple(range(7)), **vit_b))
    assert (default["prompt_layers"], default["prompt_length"], default["kernel_size"], default["lr"]) == \
        (list(range(7)), 20, 17, 0.005 * 128 / 256)
    assert build_convprompt_model("vit_base_patch16_224", pretrained=False).prompt_module.prompt_layers == \
        tuple(range(7))


@pytest.mark.parametrize("method", [ConvPrompt, L2P, DualPrompt, CodaPrompt, SequentialFineTuning, JointTraining])
def test_every_method_trains_on_the_offline_backbone_with_its_default_arguments(method):
    train, test = blob_datasets([3, 8], train_per_class=8, test_per_class=4)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=1, class_order=[3, 8])
    torch.manual_seed(0)
    snapshot = Snapshot()
    strategy = method(backbone=create_offline_backbone(), plugins=[snapshot], **TRAINING)
    strategy.train(bm.train_stream if method is JointTraining else bm.train_stream[0])
    trained = [p for g in strategy.optimizer.param_groups for p in g["params"]]
    assert trained and len(trained) == len(snapshot.before)
    assert all(not torch.equal(p, b) and torch.isfinite(p).all() for p, b in zip(trained, snapshot.before))
    assert strategy.net.heads.seen_classes == [3, 8]
    if method is ConvPrompt:
        pool = strategy.prompt_pool
        assert (pool.prompt_layers, pool.prompt_length, pool.kernel_size) == ((0, 1, 2, 3), 20, 17)
        assert strategy.prompt_pool.generators_per_task == [5]
