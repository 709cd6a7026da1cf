"""Every strategy's defaults, as its docstring and ``docs/avalanche.md`` state them.

The strategies take only their own arguments and pass the template's on in
``**kwargs``; where a method's default differs from the template's it is a class
attribute (``default_base_lr``, ``default_train_epochs``, ``default_lr_schedule``,
``default_backbone``). Each strategy is built here with no argument but
``device`` (the backbone name is recorded, a tiny ViT built in its place), and
every effective default is read back: a lost class attribute changes a number.
"""
import pytest
from timm.models.vision_transformer import VisionTransformer

import avalanche_convprompt.methods.template as template
from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning

PAPER_BACKBONE = "vit_base_patch16_224.augreg_in21k"

# method -> (base_lr, lr_schedule, train_epochs): the documented defaults that differ per method
TRAINING = {
    ConvPrompt: (0.005, "epoch_cosine", 10),
    L2P: (0.03, "constant", 5),
    DualPrompt: (0.005, "constant", 5),
    CodaPrompt: (0.002, "cosine", 20),
    SequentialFineTuning: (0.005, "epoch_cosine", 10),
    JointTraining: (0.005, "epoch_cosine", 10),
}

# the prompt module's documented sizes (on a 6-block backbone)
PROMPTS = {
    ConvPrompt: dict(prompt_layers=(0, 1, 2, 3), prompt_length=20, kernel_size=17, train_keys=False),
    L2P: dict(pool_size=10, prompt_length=5, top_k=5, selection="per_sample"),
    DualPrompt: dict(g_layers=(0, 1), e_layers=(2, 3, 4), g_length=5, e_length=20, selection="per_sample",
                     shared_prompt_pool=False, shared_prompt_key=False),
    CodaPrompt: dict(prompt_layers=(0, 1, 2, 3, 4), components_per_task=10, prompt_length=8),
    SequentialFineTuning: None,
    JointTraining: None,
}


@pytest.fixture
def built(monkeypatch):
    """``build(cls, **kwargs)``: the strategy and the (backbone, pretrained, normalize_inputs) it asked for."""
    asked = {}

    def resolve_backbone(backbone, pretrained):
        asked["backbone"], asked["pretrained"] = backbone, pretrained
        vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=6, num_heads=4, num_classes=0)
        vit.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
        return vit

    stats = template.input_statistics

    def input_statistics(vit, normalize):
        asked["normalize_inputs"] = normalize
        return stats(vit, normalize)

    monkeypatch.setattr(template, "resolve_backbone", resolve_backbone)
    monkeypatch.setattr(template, "input_statistics", input_statistics)

    def build(cls, **kwargs):
        asked.clear()
        strategy = cls(device="cpu", **kwargs)
        return strategy, dict(asked)
    return build


@pytest.mark.parametrize("cls", list(TRAINING), ids=lambda c: c.__name__)
def test_every_default(cls, built):
    strategy, asked = built(cls)
    base_lr, schedule, epochs = TRAINING[cls]
    assert asked == {"backbone": PAPER_BACKBONE, "pretrained": True, "normalize_inputs": False}
    assert strategy.lr == pytest.approx(base_lr * 128 / 256)
    assert (strategy.lr_schedule, strategy.train_epochs) == (schedule, epochs)
    assert (strategy.train_mb_size, strategy.eval_mb_size, strategy.eval_every) == (128, 128, -1)
    assert strategy.clip_grad_norm == 1.0 and strategy.norm_lr_scale == 0.005
    assert (strategy.precision, strategy.drop_last, strategy.task_incremental) == ("32", False, False)
    assert strategy.freeze_old_heads is (cls is not SequentialFineTuning)
    assert strategy.cross_entropy_over == ("seen" if cls in (SequentialFineTuning, JointTraining) else "current")
    assert type(strategy.evaluator).__name__ == "EvaluationPlugin"
    assert type(strategy.optimizer).__name__ == "Adam"
    pool = strategy.net.prompt_module
    if PROMPTS[cls] is None:
        assert pool is None
        return
    for name, value in PROMPTS[cls].items():
        got = getattr(pool, name)
        assert (tuple(got) if isinstance(value, tuple) else got) == value, name


def test_method_specific_defaults(built):
    conv, _ = built(ConvPrompt)
    assert conv.drift_penalty == 0.01 and conv.lr_from_rule
    assert conv.expansion.policy.generators_per_experience == 5
    assert built(L2P)[0].matching_weight == 0.1
    assert built(DualPrompt)[0].matching_weight == 1.0
    coda, _ = built(CodaPrompt)
    assert coda.matching_weight == 0.0 and coda.orthogonality_penalty == 0.0 and coda.head_init == "torch_default"


@pytest.mark.parametrize("cls", list(TRAINING), ids=lambda c: c.__name__)
def test_passed_arguments_win_over_the_class_defaults(cls, built):
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=6, num_heads=4, num_classes=0)
    strategy, asked = built(cls, backbone=vit, pretrained=False, normalize_inputs=True, base_lr=0.1,
                            lr_schedule="cosine", train_epochs=3, train_mb_size=64, eval_mb_size=32,
                            clip_grad_norm=None)
    assert asked == {"backbone": vit, "pretrained": False, "normalize_inputs": True}
    assert strategy.lr == pytest.approx(0.1 * 64 / 256)
    assert (strategy.lr_schedule, strategy.train_epochs, strategy.train_mb_size, strategy.eval_mb_size) == \
        ("cosine", 3, 64, 32)
    assert strategy.clip_grad_norm is None
    assert built(cls, lr=0.5)[0].lr == 0.5


@pytest.mark.parametrize("cls", list(TRAINING), ids=lambda c: c.__name__)
def test_a_misspelled_argument_is_still_refused(cls, built):
    with pytest.raises(TypeError, match="unexpected keyword argument: train_epoch"):
        built(cls, train_epoch=3)
