"""The user's optimizer and schedule are honoured: the rate read each step is the one that moves the parameters."""
import math
import os
import re

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, StepLR

from avalanche_convprompt import ConvPrompt, L2P
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.runs import run_stream

from conftest import blob_datasets, tiny_vit

TINY = {ConvPrompt: dict(prompt_layers=(0,), prompt_length=2, kernel_size=3),
        L2P: dict(pool_size=4, prompt_length=2, top_k=2)}
ITERATIONS = 2                                    # 16 images per experience, batch 8


class StepAudit(SupervisedPlugin):
    """Records each iteration's rates and checks the update against Adam/SGD run by hand at those rates.

    The reference keeps its own moments, emptied at every experience, so a
    match also shows the optimizer's state starts empty each experience and
    that ``strategy.optimizer`` (whose rates are read) is the one that steps.
    """

    def __init__(self):
        super().__init__()
        self.rates, self.optimizers, self.state_sizes, self.worst = [], [], [], 0.0
        self._moments, self._before, self._step = {}, {}, 0

    def before_training_exp(self, strategy, **kwargs):
        self.optimizers.append(strategy.optimizer)
        self.state_sizes.append(len(strategy.optimizer.state))
        self._moments, self._step = {}, 0

    def before_training_iteration(self, strategy, **kwargs):
        self.rates.append([g["lr"] for g in strategy.optimizer.param_groups])

    def before_update(self, strategy, **kwargs):
        assert [g["lr"] for g in strategy.optimizer.param_groups] == self.rates[-1]
        self._before = {p: p.detach().clone() for g in strategy.optimizer.param_groups for p in g["params"]}

    def after_update(self, strategy, **kwargs):          # gradients are the clipped ones the step used
        self._step += 1
        opt = strategy.optimizer
        for group, lr in zip(opt.param_groups, self.rates[-1]):     # the group's rate may have moved on since
            for p in group["params"]:
                expected = self._expected_update(opt, group, lr, p) if p.grad is not None else torch.zeros_like(p)
                delta = (p.detach() - self._before[p]).double()
                rounding = 2 * torch.finfo(p.dtype).eps * self._before[p].double().abs()   # float32 parameters
                self.worst = max(self.worst, float(((delta - expected).abs() - rounding).max()) / lr)

    def _expected_update(self, opt, group, lr, p):
        g = p.grad.detach().double()
        if isinstance(opt, torch.optim.Adam):
            (b1, b2), eps = group["betas"], group["eps"]
            m, v = self._moments.get(p, (torch.zeros_like(g), torch.zeros_like(g)))
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            self._moments[p] = (m, v)
            c1, c2 = 1 - b1 ** self._step, 1 - b2 ** self._step
            return -lr * (m / c1) / ((v / c2).sqrt() + eps)
        assert isinstance(opt, torch.optim.SGD) and not group["nesterov"] and group["dampening"] == 0
        buf = group["momentum"] * self._moments[p] + g if p in self._moments else g
        self._moments[p] = buf
        return -lr * buf

    def check_updates(self):
        # |measured - expected| beyond the parameters' float32 rounding, in units of the rate: a wrong
        # rate or a stale state would be off by a sizeable fraction of one step
        assert self.worst < 1e-3, self.worst


def stream():
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=8, test_per_class=2)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[2, 0, 3, 1])


def build(method, audit, **kwargs):
    torch.manual_seed(0)
    kwargs = {"train_mb_size": 8, "train_epochs": 2, "device": "cpu", "evaluator": None, **kwargs}
    return method(backbone=tiny_vit(), plugins=[audit] + kwargs.pop("plugins", []), **TINY[method], **kwargs)


def train_all(strategy):
    for experience in stream().train_stream:
        strategy.train(experience)


def per_group(rates_exp0, rates_exp1, method):
    """Expected rates per iteration: the LayerNorm group (ConvPrompt's third) at 0.005 x from the second experience."""
    if method is ConvPrompt:
        return [[r, r, r] for r in rates_exp0] + [[r, r, 0.005 * r] for r in rates_exp1]
    return [[r, r] for r in rates_exp0] + [[r, r] for r in rates_exp1]


def assert_rates(audit, expected):
    assert [len(r) for r in audit.rates] == [len(r) for r in expected]
    assert sum(audit.rates, []) == pytest.approx(sum(expected, []), rel=1e-12)


# ------------------------------------------------------------------ default
@pytest.mark.parametrize("method", [ConvPrompt, L2P])
def test_default_is_one_adam_refilled_each_experience_with_the_built_in_schedule(method):
    audit = StepAudit()
    strategy = build(method, audit, lr=0.003, lr_schedule="cosine")
    train_all(strategy)
    total = 2 * ITERATIONS
    cosine = [0.003 * (1 + math.cos(math.pi * k / total)) / 2 for k in range(total)]
    assert_rates(audit, per_group(cosine, cosine, method))
    assert type(strategy.optimizer) is torch.optim.Adam and audit.optimizers == [strategy.optimizer] * 2
    assert audit.state_sizes == [0, 0]
    audit.check_updates()


# ------------------------------------------------------- LRSchedulerPlugin
@pytest.mark.parametrize("method", [ConvPrompt, L2P])
def test_lr_scheduler_plugin_built_on_strategy_optimizer_sets_the_rate_per_epoch(method):
    audit = StepAudit()
    strategy = build(method, audit, lr=0.003)
    strategy.plugins.append(LRSchedulerPlugin(StepLR(strategy.optimizer, step_size=1, gamma=0.1),
                                              step_granularity="epoch"))
    train_all(strategy)
    epochs = [0.003] * ITERATIONS + [0.0003] * ITERATIONS        # reset_lr: every experience starts again
    assert_rates(audit, per_group(epochs, epochs, method))
    assert audit.optimizers == [strategy.optimizer] * 2 and strategy.scheduler is None
    audit.check_updates()


def test_lr_scheduler_plugin_per_iteration():
    audit = StepAudit()
    strategy = build(ConvPrompt, audit, lr=0.003)
    strategy.plugins.append(LRSchedulerPlugin(StepLR(strategy.optimizer, step_size=2, gamma=0.5),
                                              step_granularity="iteration"))
    train_all(strategy)
    steps = [0.003 * 0.5 ** (k // 2) for k in range(2 * ITERATIONS)]
    assert_rates(audit, per_group(steps, steps, ConvPrompt))
    audit.check_updates()


def test_lr_scheduler_plugin_without_reset_carries_the_rate_into_the_next_experience():
    audit = StepAudit()
    strategy = build(ConvPrompt, audit, lr=0.003)
    strategy.plugins.append(LRSchedulerPlugin(StepLR(strategy.optimizer, step_size=1, gamma=0.1),
                                              reset_lr=False, reset_scheduler=False))
    train_all(strategy)
    first = [0.003] * ITERATIONS + [0.0003] * ITERATIONS
    assert_rates(audit, per_group(first, [r / 100 for r in first], ConvPrompt))
    audit.check_updates()


def test_avalanche_style_optimizer_and_scheduler_built_before_the_strategy():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.003, momentum=0.9)
    plugin = LRSchedulerPlugin(StepLR(optimizer, step_size=1, gamma=0.1))
    audit = StepAudit()
    strategy = build(L2P, audit, optimizer=optimizer, plugins=[plugin])
    assert strategy.optimizer is optimizer and strategy.lr == 0.003
    train_all(strategy)
    epochs = [0.003] * ITERATIONS + [0.0003] * ITERATIONS
    assert_rates(audit, per_group(epochs, epochs, L2P))
    assert audit.optimizers == [optimizer] * 2 and audit.state_sizes == [0, 0]
    audit.check_updates()


# -------------------------------------------------------------- factories
def test_optimizer_factory_replaces_adam_and_keeps_the_built_in_schedule():
    audit = StepAudit()
    strategy = build(ConvPrompt, audit, lr=0.003, optimizer_factory=lambda groups: torch.optim.SGD(groups,
                                                                                                   momentum=0.9))
    train_all(strategy)
    # ConvPrompt's built-in schedule: cosine stepped per epoch (2 epochs: the full rate, then half of it)
    cosine = [0.003 * (1 + math.cos(math.pi * (k // ITERATIONS) / 2)) / 2 for k in range(2 * ITERATIONS)]
    assert cosine == pytest.approx([0.003] * ITERATIONS + [0.0015] * ITERATIONS)
    assert_rates(audit, per_group(cosine, cosine, ConvPrompt))
    assert type(strategy.optimizer) is torch.optim.SGD and audit.optimizers == [strategy.optimizer] * 2
    assert all(g["momentum"] == 0.9 for g in strategy.optimizer.param_groups)
    audit.check_updates()


@pytest.mark.parametrize("method", [ConvPrompt, L2P])
def test_scheduler_factory_replaces_the_built_in_schedule(method):
    calls = []

    def factory(optimizer, iterations, epochs):
        calls.append((optimizer, iterations, epochs))
        return LambdaLR(optimizer, lambda step: 1 / (1 + step))

    audit = StepAudit()
    strategy = build(method, audit, lr=0.003, scheduler_factory=factory)
    train_all(strategy)
    harmonic = [0.003 / (1 + k) for k in range(2 * ITERATIONS)]
    assert_rates(audit, per_group(harmonic, harmonic, method))
    assert calls == [(strategy.optimizer, 2 * ITERATIONS, 2)] * 2
    audit.check_updates()


# ------------------------------------------------------------ refusals
def refused(exception, message, make):
    with pytest.raises(exception, match="^" + re.escape(message) + "$"):
        make()


def test_combinations_that_cannot_work_are_refused_at_construction():
    def make(**kwargs):
        return lambda: L2P(backbone=tiny_vit(), device="cpu", evaluator=None, **TINY[L2P], **kwargs)

    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    refused(ValueError, "pass either optimizer= (an optimizer object the strategy re-fills at every experience) or "
            "optimizer_factory= (called once with the parameter groups), not both",
            make(optimizer=sgd, optimizer_factory=lambda groups: torch.optim.SGD(groups)))
    refused(ValueError, "lr=0.1 differs from the optimizer's rate 0.01; pass the learning rate once (in the "
            "optimizer, or as lr= with optimizer_factory)", make(optimizer=sgd, lr=0.1))
    refused(TypeError, "optimizer must be a torch.optim.Optimizer, got str; to choose the optimizer class, pass "
            "optimizer_factory=lambda groups: ...", make(optimizer="sgd"))
    refused(TypeError, "optimizer_factory returned type, not a torch.optim.Optimizer",
            make(optimizer_factory=lambda groups: torch.optim.SGD))
    refused(ValueError, "lr_schedule='cosine' and scheduler_factory both set a schedule; pass only one of them",
            make(lr_schedule="cosine", scheduler_factory=lambda opt, iterations, epochs: StepLR(opt, 1)))
    refused(ValueError, "lr_schedule='constant' and an LRSchedulerPlugin both set a schedule; drop lr_schedule "
            "(the plugin then owns the schedule) or drop the plugin",
            make(optimizer=sgd, lr_schedule="constant", plugins=[LRSchedulerPlugin(StepLR(sgd, 1))]))
    refused(ValueError, "an LRSchedulerPlugin and scheduler_factory would both step the learning rate; pass only "
            "one of them", make(optimizer=sgd, plugins=[LRSchedulerPlugin(StepLR(sgd, 1))],
                                scheduler_factory=lambda opt, iterations, epochs: StepLR(opt, 1)))
    refused(ValueError, "the LRSchedulerPlugin's scheduler is bound to an optimizer this strategy does not train; "
            "build it on strategy.optimizer after building the strategy, or pass that optimizer to the strategy "
            "as optimizer=", make(plugins=[LRSchedulerPlugin(StepLR(sgd, 1))]))
    refused(ValueError, "OneCycleLR keeps per-group settings from when it was built and cannot follow the parameter "
            "groups that change at every experience; pass scheduler_factory=lambda optimizer, iterations, epochs: "
            "OneCycleLR(optimizer, ...) instead (built at every experience)",
            make(optimizer=sgd, plugins=[LRSchedulerPlugin(OneCycleLR(sgd, max_lr=0.1, total_steps=10))]))


def test_a_plugin_added_after_construction_is_checked_before_anything_grows():
    strategy = L2P(backbone=tiny_vit(), lr_schedule="cosine", device="cpu", evaluator=None, train_mb_size=8,
                   **TINY[L2P])
    strategy.plugins.append(LRSchedulerPlugin(StepLR(strategy.optimizer, 1)))
    refused(ValueError, "lr_schedule='cosine' and an LRSchedulerPlugin both set a schedule; drop lr_schedule "
            "(the plugin then owns the schedule) or drop the plugin",
            lambda: strategy.train(stream().train_stream[0]))
    assert len(strategy.net.heads) == 0


def test_a_scheduler_factory_must_build_on_the_optimizer_it_receives():
    other = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    strategy = build(L2P, StepAudit(), scheduler_factory=lambda opt, iterations, epochs: StepLR(other, 1))
    refused(ValueError, "scheduler_factory built its scheduler on another optimizer; build it on the optimizer it "
            "receives (its first argument)", lambda: strategy.train(stream().train_stream[0]))


# ----------------------------------------------------------- checkpoints
def test_resuming_with_a_user_optimizer_and_lr_scheduler_plugin_gives_the_uninterrupted_run(tmp_path):
    bm = stream()

    def make():
        torch.manual_seed(0)
        strategy = L2P(backbone=tiny_vit(), lr=0.01, train_mb_size=8, train_epochs=2, device="cpu",
                       evaluator=default_cl_evaluator(loggers=[]), **TINY[L2P],
                       optimizer_factory=lambda groups: torch.optim.SGD(groups, momentum=0.9))
        strategy.plugins.append(LRSchedulerPlugin(StepLR(strategy.optimizer, step_size=1, gamma=0.5)))
        return strategy

    reference = make()
    full = run_stream(reference, bm, progress=False, checkpoint_dir=str(tmp_path), keep_checkpoints=2)
    os.remove(tmp_path / "exp002.pt")               # as if killed during the second experience
    resumed_strategy = make()
    resumed = run_stream(resumed_strategy, bm, progress=False, checkpoint_dir=str(tmp_path), resume=True)
    assert resumed.accuracy_matrix == full.accuracy_matrix
    for (name, a), b in zip(reference.model.state_dict().items(), resumed_strategy.model.state_dict().values()):
        assert torch.equal(a, b), name
