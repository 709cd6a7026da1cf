"""The ConvPrompt strategy inside Avalanche: what trains, what is saved, what is counted."""
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin

from avalanche_convprompt import ConvPrompt, FixedAllocation, PromptExpansionPlugin, SequentialFineTuning
from avalanche_convprompt.methods import build_convprompt_model

from conftest import blob_datasets, tiny_vit


class ParameterAudit(SupervisedPlugin):
    """Records, at the first iteration of the audited experience, which parameters got a gradient."""

    def __init__(self, audited_experience):
        super().__init__()
        self.audited = audited_experience
        self.with_grad = None
        self.snapshot = None

    def before_training_exp(self, strategy, **kwargs):
        if strategy.experience.current_experience == self.audited:   # after the pool and heads grew
            self.snapshot = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}

    def after_backward(self, strategy, **kwargs):
        if strategy.experience.current_experience == self.audited and self.with_grad is None:
            self.with_grad = {n for n, p in strategy.model.named_parameters()
                              if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("train_keys", [False, True])
def test_gradient_audit_on_second_experience(tiny_convprompt_kwargs, train_keys):
    """Exactly the recipe's parameters train; the new keys only with ``train_keys`` (the reference: never)."""
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=8)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[2, 0, 3, 1])
    audit = ParameterAudit(audited_experience=1)
    kwargs = dict(tiny_convprompt_kwargs, train_mb_size=64)      # one iteration per experience
    strategy = ConvPrompt(backbone=tiny_vit(), lr=0.01, plugins=[audit], train_keys=train_keys, **kwargs)
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    before = audit.snapshot
    after = dict(strategy.model.named_parameters())

    norms = {n for n in before if n.startswith("backbone.vit.") and (".norm1." in n or ".norm2." in n
                                                                      or n.startswith("backbone.vit.norm."))}
    assert len(norms) == 2 * 4 * 2 + 2
    should_train = norms | {
        "prompt_module.shared_embeddings", "prompt_module.conv_weights.1", "prompt_module.conv_biases.1",
        "heads.heads.1.norm.weight", "heads.heads.1.norm.bias",
        "heads.heads.1.linear.weight", "heads.heads.1.linear.bias",
    } | {n for n in before if n.startswith("prompt_module.matcher.")} | (
        {"prompt_module.keys.1"} if train_keys else set())
    assert audit.with_grad == should_train
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == should_train
    frozen = set(before) - should_train
    assert {"prompt_module.conv_weights.0", "prompt_module.keys.0", "heads.heads.0.linear.weight",
            "backbone.vit.blocks.0.attn.qkv.weight", "backbone.vit.patch_embed.proj.weight"} <= frozen
    optimised = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
    assert (id(after["prompt_module.keys.1"]) in optimised) == train_keys
    assert not any(id(k) in optimised for k in strategy.prompt_pool.keys[:1])
    # norms learn at 0.005 x lr from the second experience on; everything else at lr
    lrs = {id(p): g["initial_lr"] for g in strategy.optimizer.param_groups for p in g["params"]}
    assert lrs[id(after["backbone.vit.blocks.0.norm1.weight"])] == pytest.approx(0.01 * 0.005)
    assert lrs[id(after["prompt_module.conv_weights.1"])] == pytest.approx(0.01)
    assert len(lrs) == len(should_train)                        # nothing frozen sits in the optimizer


def test_first_experience_trains_norms_at_full_lr(tiny_convprompt_kwargs):
    train, test = blob_datasets([0, 1])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=1)
    strategy = ConvPrompt(backbone=tiny_vit(), lr=0.02, **tiny_convprompt_kwargs)
    strategy.train(bm.train_stream[0])
    norm = strategy.net.backbone.vit.blocks[0].norm1.weight
    group = next(g for g in strategy.optimizer.param_groups if any(p is norm for p in g["params"]))
    assert group["initial_lr"] == pytest.approx(0.02)
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)        # cosine schedule reached 0 at the end


def test_drift_penalty_anchors_at_the_start_of_the_experience(tiny_convprompt_kwargs):
    train, test = blob_datasets([0, 1, 2, 3])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)
    strategy = ConvPrompt(backbone=tiny_vit(), lr=0.01, **tiny_convprompt_kwargs)
    strategy.train(bm.train_stream[0])
    assert strategy.drift_loss().item() == 0.0                    # first experience: no penalty
    strategy.train(bm.train_stream[1])
    pool = strategy.prompt_pool
    expected = sum((p - a).abs().sum() for p, a in zip(pool.shared_parameters(), strategy._drift_anchor))
    assert strategy.drift_loss().item() == pytest.approx(expected.item())
    assert strategy.drift_loss().item() > 0                       # the shared parts moved during experience 1


def test_state_dict_after_second_experience_reloads_exactly(tiny_convprompt_kwargs):
    train, test = blob_datasets([3, 7, 1, 9, 5, 0])
    bm = nc_benchmark(train, test, n_experiences=3, task_labels=False, fixed_class_order=[7, 3, 9, 1, 0, 5])
    strategy = ConvPrompt(backbone=tiny_vit(), lr=0.01, generators_per_task=3, **tiny_convprompt_kwargs)
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
    state = strategy.model.state_dict()
    class Recording(FixedAllocation):
        seen = []

        def allocate(self, experience, new_classes, previous_classes):
            self.seen.append((experience, list(previous_classes)))
            return super().allocate(experience, new_classes, previous_classes)

    fresh = ConvPrompt(backbone=tiny_vit(seed=1), lr=0.01, allocation=Recording(3), **tiny_convprompt_kwargs)
    fresh.model.load_state_dict(state)
    assert fresh.prompt_pool.generators_per_task == [3, 3]
    assert fresh.net.heads.seen_classes == [3, 7, 1, 9]
    x = torch.stack([test[i][0] for i in range(0, len(test), 5)])
    strategy.model.eval(), fresh.model.eval()
    with torch.no_grad():
        assert torch.equal(strategy.model(x), fresh.model(x))
    # and the reloaded strategy keeps learning: the third experience adds a head and generators
    fresh.train(bm.train_stream[2])
    assert Recording.seen == [(2, [3, 7, 1, 9])]          # the policy sees what the reloaded model learned
    assert fresh.prompt_pool.generators_per_task == [3, 3, 3]
    assert fresh.net.heads.seen_classes == [3, 7, 1, 9, 0, 5]


def test_parameter_count_matches_the_paper_breakdown_for_vit_b():
    model = build_convprompt_model("vit_base_patch16_224", pretrained=False)
    for _ in range(10):
        model.prompt_module.add_generators(5)
    model.heads.add_head(range(10))
    parts = model.parameter_breakdown()
    assert parts == {
        "generators": 2_436_000, "shared_embeddings": 483_840, "matcher": 369_216, "keys": 9_600,
        "layer_norms": 38_400, "heads": 9_226, "total": 3_346_282,
    }
    model.heads.add_head(range(10, 20))
    assert model.parameter_breakdown()["heads"] == 2 * 9_226
    model.heads.add_head(range(20, 40))
    assert model.parameter_breakdown()["heads"] == 2 * 9_226 + 16_916


def test_class_ids_in_any_order_reach_the_right_outputs(tiny_convprompt_kwargs):
    train, test = blob_datasets([12, 4, 30, 8])
    bm = nc_benchmark(train, test, n_experiences=2, task_labels=False, fixed_class_order=[30, 4, 12, 8])
    strategy = ConvPrompt(backbone=tiny_vit(), lr=0.01, **tiny_convprompt_kwargs)
    strategy.train(bm.train_stream[0])
    with torch.no_grad():
        out = strategy.model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 31)
    live = (out > torch.finfo(out.dtype).min).all(0).nonzero().flatten().tolist()
    assert live == [4, 30]


def test_expansion_policy_decides_pool_growth(tiny_convprompt_kwargs):
    class Growing:
        def allocate(self, experience, new_classes, previous_classes):
            return FixedAllocation(experience + 1).allocate(experience, new_classes, previous_classes)

    train, test = blob_datasets([0, 1, 2, 3, 4, 5])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=3)
    plugin = PromptExpansionPlugin(Growing())
    strategy = ConvPrompt(backbone=tiny_vit(), plugins=[plugin], **tiny_convprompt_kwargs)
    for exp in bm.train_stream:
        strategy.train(exp)
    assert strategy.prompt_pool.generators_per_task == [1, 2, 3]
    assert [a.generators for a in plugin.history] == [1, 2, 3]
    assert plugin.previous_classes == [c for e in bm.train_stream for c in sorted(e.classes_in_this_experience)]


def test_sequential_finetuning_trains_all_heads_without_prompts(tiny_convprompt_kwargs):
    train, test = blob_datasets([0, 1, 2, 3])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)
    kwargs = {k: v for k, v in tiny_convprompt_kwargs.items() if k not in ("prompt_layers", "prompt_length",
                                                                            "kernel_size")}
    strategy = SequentialFineTuning(backbone=tiny_vit(), lr=0.01, **kwargs)
    strategy.train(bm.train_stream[0])
    head0 = strategy.net.heads.heads[0].linear.weight.detach().clone()
    strategy.train(bm.train_stream[1])
    assert strategy.net.prompt_module is None
    assert not torch.equal(head0, strategy.net.heads.heads[0].linear.weight)   # old head kept training
    assert set(strategy.net.parameter_breakdown()) == {"layer_norms", "heads", "total"}


def test_bad_experiences_fail_clearly(tiny_convprompt_kwargs):
    train, test = blob_datasets([0, 1, 2, 3])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)
    wrong_size = ConvPrompt(backbone="vit_tiny_patch16_224", pretrained=False, **tiny_convprompt_kwargs)
    with pytest.raises(ValueError, match="expects 224x224 images, got 32x32"):
        wrong_size.train(bm.train_stream[0])


def test_evaluation_convolves_once_per_pass_and_matches_a_plain_forward(tiny_convprompt_kwargs):
    train, test = blob_datasets([0, 1, 2, 3], test_per_class=20)
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)
    strategy = ConvPrompt(backbone=tiny_vit(), lr=0.01, **dict(tiny_convprompt_kwargs, eval_mb_size=8))
    for exp in bm.train_stream:
        strategy.train(exp)
    pool = strategy.prompt_pool
    calls = []
    original = pool.generator_outputs
    pool.generator_outputs = lambda tasks: calls.append(1) or original(tasks)
    outputs = []
    hook = strategy.model.register_forward_hook(lambda m, i, o: outputs.append((i[0], o)))
    strategy.eval(bm.test_stream)                     # 2 experiences x 40 images, batches of 8
    hook.remove()
    assert len(outputs) == 10 and len(calls) == 2     # one convolution per evaluated experience
    strategy.model.eval()
    with torch.no_grad():
        for x, out in outputs:
            assert torch.equal(strategy.model(x), out)


def test_loading_heads_keeps_host_class_list_in_sync():
    model = build_convprompt_model(tiny_vit(), prompt_layers=(0,), prompt_length=2, kernel_size=3)
    model.heads.add_head([4, 2])
    other = build_convprompt_model(tiny_vit(), prompt_layers=(0,), prompt_length=2, kernel_size=3)
    other.heads.add_head([9, 7])
    model.load_state_dict(other.state_dict(), strict=False)
    assert model.heads.seen_classes == [7, 9]
    assert model.heads.num_outputs == 10


def test_periodic_evaluation_during_training_works_from_the_first_experience(tiny_convprompt_kwargs):
    from avalanche_convprompt.evaluation import default_cl_evaluator
    train, test = blob_datasets([0, 1, 2, 3])
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=2)
    strategy = ConvPrompt(backbone=tiny_vit(), **dict(tiny_convprompt_kwargs, eval_every=1,
                                                      evaluator=default_cl_evaluator(loggers=[])))
    for experience in bm.train_stream:
        strategy.train(experience, eval_streams=[bm.test_stream[:1]])
    accuracy = strategy.evaluator.get_all_metrics()["Top1_Acc_Exp/eval_phase/test_stream/Exp000"][1]
    assert len(accuracy) >= 3          # evaluated during the first experience, and before and during the second
