"""Avalanche idioms of issue 18: GDumb, LwF and model copies, the caller's backbone, loss on untrained
classes, one-class experiences, Avalanche-style constructor calls (docs/avalanche_idioms.md).

Tiny ViT, tiny blob data, CPU.
"""
import copy
import io
import warnings

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import loss_metrics
from avalanche.training.plugins import EvaluationPlugin, GDumbPlugin, LwFPlugin
from torch import nn

from avalanche_convprompt import CodaPrompt, ConvPrompt, DualPrompt, JointTraining, L2P, SequentialFineTuning
from avalanche_convprompt.methods.idioms import OneClassExperienceWarning, UndefinedLossWarning
from avalanche_convprompt.models.prompted_vit import BackboneUnavailable
from avalanche_convprompt.runs.distributed import unwrap

from conftest import blob_datasets, tiny_vit

SIZES = {
    ConvPrompt: dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3),
    L2P: dict(pool_size=4, prompt_length=2, top_k=2),
    DualPrompt: dict(g_layers=(0,), e_layers=(1, 2), g_length=2, e_length=3),
    CodaPrompt: dict(prompt_layers=(0, 1), components_per_task=3, prompt_length=4),
    SequentialFineTuning: {},
}
CONTINUAL = list(SIZES)
PROMPT_METHODS = [ConvPrompt, L2P, DualPrompt, CodaPrompt]
ids = dict(ids=lambda m: m.__name__)


def stream(n_classes=4, experiences=2, train_per_class=10, test_per_class=5, per_exp=None):
    train, test = blob_datasets(list(range(n_classes)), train_per_class=train_per_class,
                                test_per_class=test_per_class)
    split = dict(num_classes_per_exp=per_exp) if per_exp else dict(num_experiences=experiences)
    return class_incremental_benchmark({"train": train, "test": test}, class_order=list(range(n_classes)), **split)


def build(method, backbone=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    settings = dict(lr=0.01, train_mb_size=8, train_epochs=1, eval_mb_size=16, device="cpu", evaluator=None)
    settings.update(kwargs)
    return method(backbone=backbone if backbone is not None else tiny_vit(), **{**SIZES.get(method, {}), **settings})


def prompt_tasks(strategy) -> int:
    """How many experiences' worth of prompts the method's pool holds (L2P's pool does not grow: None)."""
    pool = strategy.net.prompt_module
    if isinstance(strategy, ConvPrompt):
        return len(pool.keys)
    return getattr(pool, "num_tasks", None)


# ------------------------------------------------------------------ GDumb
class HeadSnapshot(SupervisedPlugin):
    """The heads' parameters when training of each experience starts (after GDumb's reset and the growth)."""

    def before_training_epoch(self, strategy, **kwargs):
        if strategy.clock.train_exp_epochs == 0:
            self.start = [p.detach().clone() for p in strategy.net.heads.parameters()]


@pytest.mark.parametrize("method", CONTINUAL, **ids)
def test_gdumb_trains_the_method_from_scratch_on_its_whole_buffer(method):
    """After every reset the model is the method trained on GDumb's buffer as its only experience: one head over
    all buffer classes, every column of it trained, one share of prompts; GDumb's pristine copy stays pristine."""
    bm = stream(n_classes=6, experiences=3, train_per_class=4)
    gdumb, snapshot = GDumbPlugin(mem_size=18), HeadSnapshot()
    strategy = build(method, plugins=[gdumb, snapshot], lr=0.03)
    for t, experience in enumerate(bm.train_stream):
        strategy.train(experience)
        heads = strategy.net.heads
        assert len(heads) == 1 and heads.seen_classes == list(range(2 * (t + 1)))
        weight_start = snapshot.start[-2 if heads.norm else 0]       # [norm.weight, norm.bias, linear.weight, ...]
        weight_end = heads.heads[0].linear.weight.detach()
        assert weight_end.shape[0] == 2 * (t + 1)
        assert all(not torch.equal(weight_end[c], weight_start[c]) for c in range(2 * (t + 1))), \
            "every buffer class's logit must train, earlier ones included"
        assert all(p.requires_grad for p in heads.parameters())
        assert prompt_tasks(strategy) in (None, 1) if method is not SequentialFineTuning else True
        assert len(unwrap(gdumb.init_model).heads) == 0                 # the pristine copy stays pristine
    if method is ConvPrompt:
        assert strategy.prompt_pool.num_generators == 5                  # one allocation, for the reset model
    metrics = strategy.eval(bm.test_stream)
    assert metrics is not None


def test_gdumb_learns_every_class_of_its_buffer():
    """The buffer holds every class: the reset ConvPrompt learns all of them, not only the newest experience's."""
    bm = stream(n_classes=4, experiences=2, train_per_class=10, test_per_class=10)
    strategy = build(ConvPrompt, plugins=[GDumbPlugin(mem_size=40)], lr=0.05, train_epochs=8)
    for experience in bm.train_stream:
        strategy.train(experience)
    strategy.model.eval()
    with torch.no_grad():
        for exp in bm.test_stream:                                      # each experience's classes, separately
            x = torch.stack([exp.dataset[i][0] for i in range(len(exp.dataset))])
            y = torch.as_tensor([exp.dataset[i][1] for i in range(len(exp.dataset))])
            accuracy = float((strategy.model(x).argmax(1) == y).float().mean())
            assert accuracy > 0.5, (exp.current_experience, accuracy)     # chance over 4 classes: 0.25


def test_gdumb_resets_before_convprompt_grows_whatever_the_plugin_order():
    from avalanche_convprompt import FixedAllocation, PromptExpansionPlugin
    strategy = build(ConvPrompt, plugins=[PromptExpansionPlugin(FixedAllocation(2)), GDumbPlugin(8)])
    for experience in stream(train_per_class=2).train_stream:
        strategy.train(experience)
    assert strategy.prompt_pool.num_generators == 2 and len(strategy.net.heads) == 1


def test_gdumb_is_refused_where_it_cannot_mean_anything():
    with pytest.raises(ValueError, match="GDumbPlugin trains one model on a buffer that mixes every task"):
        build(L2P, plugins=[GDumbPlugin(10)], task_incremental=True).train(stream().train_stream[0])
    with pytest.raises(ValueError, match="JointTraining trains once on the whole stream; a GDumbPlugin"):
        build(JointTraining, plugins=[GDumbPlugin(10)]).train(stream().train_stream)


# ------------------------------------------------------------------ LwF and copies of the model
class LossBeforeAndAfter(SupervisedPlugin):
    """Records ``strategy.loss`` in ``before_backward``: placed before and after LwF, the difference is LwF's term."""

    def __init__(self):
        super().__init__()
        self.values = []

    def before_backward(self, strategy, **kwargs):
        self.values.append((strategy.experience.current_experience, float(strategy.loss.detach())))


@pytest.mark.parametrize("method", CONTINUAL, **ids)
def test_lwf_distils_from_the_copy_it_takes_after_each_experience(method):
    bm = stream()
    before, after = LossBeforeAndAfter(), LossBeforeAndAfter()
    lwf = LwFPlugin(alpha=1.0, temperature=2.0)
    strategy = build(method, plugins=[before, lwf, after])
    for experience in bm.train_stream:
        strategy.train(experience)
    assert lwf.lwf.prev_model is not None
    terms = [(e, a - b) for (e, b), (_, a) in zip(before.values, after.values)]
    assert all(term == 0 for e, term in terms if e == 0)                # nothing to distil from yet
    assert any(term > 0 for e, term in terms if e == 1)                 # the distillation term is there


@pytest.mark.parametrize("method", CONTINUAL, **ids)
def test_the_model_copies_and_pickles_right_after_train(method):
    bm = stream()
    strategy = build(method)
    strategy.train(bm.train_stream[0])
    clone = copy.deepcopy(strategy.model)
    buffer = io.BytesIO()
    torch.save(strategy.model, buffer)
    x = torch.stack([bm.test_stream[0].dataset[i][0] for i in range(8)])
    strategy.model.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(clone(x), strategy.model(x))


# ------------------------------------------------------------------ the caller's backbone
@pytest.mark.parametrize("method", CONTINUAL, **ids)
def test_the_backbone_passed_in_is_never_modified(method):
    vit = tiny_vit()
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    flags = {n: p.requires_grad for n, p in vit.named_parameters()}
    strategy = build(method, backbone=vit, lr=0.05)
    strategy.train(stream().train_stream[0])
    assert strategy.net.backbone.vit is not vit
    assert all(torch.equal(v, state[k]) for k, v in vit.state_dict().items())
    assert {n: p.requires_grad for n, p in vit.named_parameters()} == flags
    if method in (ConvPrompt, SequentialFineTuning):                    # these do train their copy's LayerNorms
        assert not torch.equal(strategy.net.backbone.vit.blocks[0].norm1.weight, state["blocks.0.norm1.weight"])


def test_one_backbone_for_two_methods_equals_two_fresh_ones():
    bm = stream()

    def run(method, vit):
        strategy = build(method, backbone=vit, lr=0.05)
        for experience in bm.train_stream:
            strategy.train(experience)
        return strategy.net.state_dict()

    shared = tiny_vit()
    first, second = run(ConvPrompt, shared), run(SequentialFineTuning, shared)
    fresh_first, fresh_second = run(ConvPrompt, tiny_vit()), run(SequentialFineTuning, tiny_vit())
    for got, want in ((first, fresh_first), (second, fresh_second)):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


# ------------------------------------------------------------------ loss on experiences not trained yet
@pytest.mark.parametrize("method", CONTINUAL, **ids)
def test_loss_on_untrained_experiences_is_nan_with_one_warning(method):
    """The loop that evaluates the whole test stream: Loss_Exp of an untrained experience and Loss_Stream read NaN
    (never 0.0), with one UndefinedLossWarning; once everything is trained every loss is finite."""
    bm = stream()
    evaluator = EvaluationPlugin(loss_metrics(experience=True, stream=True), loggers=[])
    strategy = build(method, evaluator=evaluator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = []
        for experience in bm.train_stream:
            strategy.train(experience)
            history.append(strategy.eval(bm.test_stream))
    undefined = [w for w in caught if issubclass(w.category, UndefinedLossWarning)]
    assert len(undefined) == 1
    message = str(undefined[0].message)
    assert "classes [2, 3]" in message and "NaN" in message and "strategy.eval(test_stream[:t + 1])" in message
    exp0, exp1 = (f"Loss_Exp/eval_phase/test_stream/Exp00{i}" for i in (0, 1))
    stream_loss = "Loss_Stream/eval_phase/test_stream"
    assert 0 < history[0][exp0] < float("inf")
    assert history[0][exp1] != history[0][exp1] and history[0][stream_loss] != history[0][stream_loss]   # NaN
    assert all(0 < history[1][k] < float("inf") for k in (exp0, exp1, stream_loss))


def test_loss_of_an_untrained_task_is_nan_in_task_incremental_mode():
    from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark
    bm = task_incremental_benchmark(stream(), reset_task_labels=True)
    evaluator = EvaluationPlugin(loss_metrics(experience=True), loggers=[])
    strategy = build(L2P, evaluator=evaluator, task_incremental=True)
    strategy.train(bm.train_stream[0])
    with pytest.warns(UndefinedLossWarning, match=r"test samples of tasks \[1\]"):
        metrics = strategy.eval(bm.test_stream)
    values = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("Loss_Exp")}
    assert 0 < values["Exp000"] < float("inf") and values["Exp001"] != values["Exp001"]


# ------------------------------------------------------------------ one-class experiences
class CrossEntropyRecorder(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.values = []

    def before_backward(self, strategy, **kwargs):
        self.values.append((strategy.experience.current_experience, float(strategy.training_cross_entropy().detach())))


@pytest.mark.parametrize("method", PROMPT_METHODS, **ids)
def test_one_class_experiences_warn_once_and_cross_entropy_over_seen_trains_them(method):
    bm = stream(n_classes=4, per_exp=[2, 1, 1])
    recorder = CrossEntropyRecorder()
    strategy = build(method, plugins=[recorder])
    with pytest.warns(OneClassExperienceWarning) as caught:
        for experience in bm.train_stream:
            strategy.train(experience)
    one_class = [w for w in caught if issubclass(w.category, OneClassExperienceWarning)]
    assert len(one_class) == 1
    assert "experience 1" in str(one_class[0].message) and "cross_entropy_over='seen'" in str(one_class[0].message)
    assert all(v == 0.0 for e, v in recorder.values if e > 0)           # the reference's masked loss: exactly 0
    assert all(v > 0.0 for e, v in recorder.values if e == 0)

    recorder = CrossEntropyRecorder()
    strategy = build(method, plugins=[recorder], cross_entropy_over="seen")
    with warnings.catch_warnings():
        warnings.simplefilter("error", OneClassExperienceWarning)
        for experience in bm.train_stream:
            strategy.train(experience)
    assert all(v > 0.0 for _, v in recorder.values)                     # against the earlier classes' logits


def test_a_one_class_first_experience_says_nothing_can_be_learned():
    bm = stream(n_classes=3, per_exp=[1, 2])
    with pytest.warns(OneClassExperienceWarning, match="at least two classes in its first experience"):
        build(SequentialFineTuning).train(bm.train_stream[0])


def test_cross_entropy_over_is_checked():
    with pytest.raises(ValueError, match=r"cross_entropy_over must be one of \('current', 'seen'\), got 'all'"):
        build(L2P, cross_entropy_over="all")
    with pytest.raises(ValueError, match="cross_entropy_over='seen' is class-incremental"):
        build(L2P, cross_entropy_over="seen", task_incremental=True)
    with pytest.raises(ValueError, match="SequentialFineTuning always trains over every class seen so far"):
        build(SequentialFineTuning, cross_entropy_over="current")


# ------------------------------------------------------------------ Avalanche-style constructor calls
def test_positional_arguments_are_refused():
    with pytest.raises(TypeError, match=r"ConvPrompt takes keyword arguments only, got 3 positional"):
        ConvPrompt(tiny_vit(), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), nn.CrossEntropyLoss())


@pytest.mark.parametrize("method", CONTINUAL + [JointTraining], **ids)
def test_model_is_refused_with_a_message_naming_backbone(method):
    with pytest.raises(TypeError, match="takes no model=: pass that VisionTransformer as backbone="):
        method(model=tiny_vit(), device="cpu", evaluator=None)


def test_criterion_cross_entropy_is_accepted_and_any_other_refused_before_any_download():
    strategy = build(ConvPrompt, criterion=nn.CrossEntropyLoss())
    strategy.train(stream().train_stream[0])
    for criterion in (nn.NLLLoss(), nn.CrossEntropyLoss(label_smoothing=0.1)):
        with pytest.raises(ValueError, match=r"criterion= accepts only a plain nn.CrossEntropyLoss\(\)"):
            L2P(criterion=criterion, device="cpu")          # the default backbone: refused before it is loaded


def test_an_unreachable_default_backbone_says_what_to_pass(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BackboneUnavailable) as err:
        ConvPrompt(device="cpu", evaluator=None)
    message = str(err.value)
    assert "'vit_base_patch16_224.augreg_in21k'" in message and "LocalEntryNotFoundError" in message
    assert "pretrained_cfg_overlay=dict(file=" in message and "backbone='offline'" in message


def test_the_offline_backbone_by_name():
    strategy = ConvPrompt(backbone="offline", device="cpu", evaluator=None, train_mb_size=8)
    assert strategy.net.backbone.depth == 6 and strategy.net.backbone.prompt_layers == (0, 1, 2, 3)
