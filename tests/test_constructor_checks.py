"""Constructor arguments that would train wrongly with no error are refused; settings that shape training are
compared on resume (found by trying 0.2 as a user would)."""
import inspect

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

from avalanche_convprompt import L2P, CodaPrompt, ConvPrompt, DualPrompt, JointTraining, SequentialFineTuning
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.methods import build_prompted_classifier
from avalanche_convprompt.runs.checkpoint import SettingsChanged, maybe_load_checkpoint, save_checkpoint

from conftest import blob_datasets, tiny_vit

TINY = dict(prompt_layers=(0, 1), prompt_length=2, kernel_size=3, device="cpu", train_mb_size=8, train_epochs=1,
            lr=0.01)


@pytest.mark.parametrize("clip", [0, 0.0, -1.0, "1"])
def test_a_clipping_norm_that_is_not_positive_is_refused(clip):
    """0 would scale every gradient to zero (nothing trains) and a negative norm reverses every update."""
    with pytest.raises(ValueError, match=r"clip_grad_norm must be a positive number, or None for no clipping, got "):
        L2P(backbone=tiny_vit(), device="cpu", evaluator=None, clip_grad_norm=clip)


def test_clipping_off_is_none():
    assert L2P(backbone=tiny_vit(), device="cpu", evaluator=None, clip_grad_norm=None).clip_grad_norm is None


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(train_epochs=2.5), TypeError, "train_epochs must be a whole number >= 1, got 2.5"),
    (dict(train_epochs=0), ValueError, "train_epochs must be >= 1, got 0"),
    (dict(train_mb_size=None), TypeError, "train_mb_size must be a whole number >= 1, got None"),
    (dict(eval_mb_size=0), ValueError, "eval_mb_size must be >= 1, got 0"),
    (dict(lr="0.01"), TypeError, "lr must be a number, got '0.01'"),
    (dict(norm_lr_scale=-0.1), ValueError, "norm_lr_scale must be >= 0, got -0.1"),
    (dict(pretrained="no"), TypeError, "pretrained and normalize_inputs must be True or False, got 'no', False"),
])
def test_wrong_types_and_sizes_are_refused_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        SequentialFineTuning(**{"backbone": tiny_vit(), "device": "cpu", "evaluator": None, **kwargs})


@pytest.mark.parametrize("given", [dict(normalize_inputs=True), dict(pretrained=False)])
def test_options_of_a_network_the_strategy_does_not_build_are_refused_with_model(given):
    """With model= the strategy builds nothing, so these would be ignored silently."""
    from test_outside_method import SharedPrefix, SharedPrefixStrategy   # noqa: F401  (a model= strategy)
    model = build_prompted_classifier(tiny_vit(), False, lambda vit: SharedPrefix((0,), vit.num_heads, vit.head_dim))
    from avalanche_convprompt.methods import PromptedViTTemplate

    class ModelStrategy(PromptedViTTemplate):
        def trainable_groups(self):
            return [{"params": list(self.net.prompt_module.parameters()), "lr": self.lr}]

    word = "normalize_inputs=True" if "normalize_inputs" in given else "pretrained=False"
    with pytest.raises(TypeError, match=f"ModelStrategy got model= and {word}, which only shape a network"):
        ModelStrategy(model=model, device="cpu", evaluator=None, **given)
    assert ModelStrategy(model=model, device="cpu", evaluator=None).net is model


def _stream():
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=8, test_per_class=4)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[0, 1, 2, 3])


def _build(**overrides):
    torch.manual_seed(0)
    return ConvPrompt(backbone=tiny_vit(), evaluator=default_cl_evaluator(loggers=[]), **{**TINY, **overrides})


@pytest.mark.parametrize("changed, key", [
    (dict(cross_entropy_over="seen"), r"strategy\.cross_entropy_over 'current' -> 'seen'"),
    (dict(optimizer_factory=lambda groups: torch.optim.SGD(groups)), r"strategy\.optimizer 'Adam' -> 'SGD'"),
    (dict(scheduler_factory=lambda opt, iterations, epochs: torch.optim.lr_scheduler.StepLR(opt, 1)),
     r"strategy\.scheduler_factory None -> .*<lambda>"),
])
def test_resuming_under_another_loss_optimizer_or_schedule_is_refused(tmp_path, changed, key):
    bm = _stream()
    strategy = _build()
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream[:1])
    save_checkpoint(strategy, tmp_path / "run.pt")
    if "scheduler_factory" in changed:
        changed = dict(changed, lr_schedule=None)
    with pytest.raises(SettingsChanged, match=key):
        maybe_load_checkpoint(_build(**changed), tmp_path / "run.pt")
    assert maybe_load_checkpoint(_build(), tmp_path / "run.pt")[1] == 1


def test_freezing_the_lower_bounds_heads_is_refused_clearly():
    with pytest.raises(ValueError, match=r"SequentialFineTuning trains every head on every experience"):
        SequentialFineTuning(backbone=tiny_vit(), device="cpu", evaluator=None, freeze_old_heads=True)


@pytest.mark.parametrize("cls, base_lr, epochs, schedule", [
    (ConvPrompt, 0.005, 10, "epoch_cosine"), (L2P, 0.03, 5, "constant"), (DualPrompt, 0.005, 5, "constant"),
    (CodaPrompt, 0.002, 20, "cosine"), (SequentialFineTuning, 0.005, 10, "epoch_cosine"),
    (JointTraining, 0.005, 10, "epoch_cosine")])
def test_the_signature_shows_every_argument_with_the_classs_own_defaults(cls, base_lr, epochs, schedule):
    """help() and inspect.signature show the shared arguments too, not only a strategy's own plus **kwargs."""
    params = inspect.signature(cls).parameters
    for name in ("backbone", "pretrained", "lr", "clip_grad_norm", "train_mb_size", "eval_mb_size", "device",
                 "plugins", "evaluator", "precision", "optimizer_factory"):
        assert name in params, name
    assert (params["base_lr"].default, params["train_epochs"].default, params["lr_schedule"].default) == (
        base_lr, epochs, schedule)
    assert "model" not in params and "make_prompt_module" not in params          # not the caller's to pass
    assert all(p.kind == p.KEYWORD_ONLY for p in params.values())
    small = {ConvPrompt: dict(prompt_layers=(0, 1), kernel_size=3), DualPrompt: dict(g_layers=(0,), e_layers=(1,)),
             CodaPrompt: dict(prompt_layers=(0, 1))}.get(cls, {})
    built = cls(backbone=tiny_vit(), device="cpu", evaluator=None, **small)
    assert (built.train_epochs, built.lr_schedule) == (epochs, schedule)        # the shown defaults are the real ones


def test_a_users_subclass_shows_its_own_arguments_and_defaults_first():
    class MyL2P(L2P):
        default_base_lr = 0.01

        def __init__(self, *, temperature: float = 2.0, **kwargs):
            self.temperature = temperature
            super().__init__(**kwargs)

    params = inspect.signature(MyL2P).parameters
    assert list(params)[:3] == ["temperature", "pool_size", "prompt_length"]
    assert params["base_lr"].default == 0.01 and params["train_epochs"].default == 5
    strategy = MyL2P(backbone=tiny_vit(), device="cpu", evaluator=None, temperature=3.0, train_mb_size=256)
    assert (strategy.temperature, strategy.lr) == (3.0, 0.01)


@pytest.mark.parametrize("kwargs", [dict(train_epochs=2.5), dict(clip_grad_norm=0), dict(lr_schedule="cosin"),
                                    dict(precision="8")])
def test_a_bad_argument_is_refused_before_the_network_is_built(monkeypatch, kwargs):
    """The default backbone's weights are not loaded (or fetched) for a strategy whose arguments are wrong."""
    import avalanche_convprompt.methods.template as template

    def no_backbone(*args, **kwargs):
        raise AssertionError("the network was built before the arguments were checked")

    monkeypatch.setattr(template, "resolve_backbone", no_backbone)
    with pytest.raises((TypeError, ValueError)):
        L2P(device="cpu", evaluator=None, **kwargs)
