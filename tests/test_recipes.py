"""Reference recipes: batch vote, shared E-prompt pool, CODA's orthogonality and schedule, the runner's protocols."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from timm.models.vision_transformer import VisionTransformer

from avalanche_convprompt import CodaPrompt, L2P
from avalanche_convprompt.methods.coda_prompt.prompt_pool import CodaPromptPool
from avalanche_convprompt.methods.dualprompt.prompt_pool import DualPromptPool
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.methods.l2p.prompt_pool import L2PPromptPool
from avalanche_convprompt.methods import (CODA_BACKBONE, CONVPROMPT_BACKBONE, DUALPROMPT_BACKBONE, L2P_BACKBONE,
                                          REFERENCE_RECIPES, build_strategy, reference_recipe, resolved_recipe)
from avalanche_convprompt.models.prompt_plan import batch_vote

from conftest import blob_datasets, tiny_vit


# ------------------------------------------------------------- batch vote
def test_batch_vote_takes_the_prompts_most_samples_chose():
    selected = torch.tensor([[0, 1], [1, 0], [1, 3], [2, 3]])          # counts: 0:2, 1:3, 2:1, 3:2
    assert batch_vote(selected, 4, 2).tolist() == [[1, 0]] * 4          # ties (0 and 3): the lower id
    assert batch_vote(torch.tensor([[2], [0], [2]]), 3, 1).tolist() == [[2]] * 3


def test_l2p_batch_vote_gives_every_sample_the_majority_prompts_and_their_loss():
    torch.manual_seed(0)
    q = torch.randn(4, 64)
    per_sample = L2PPromptPool(64, 4, pool_size=4, prompt_length=2, top_k=2)
    voted = L2PPromptPool(64, 4, pool_size=4, prompt_length=2, top_k=2, selection="batch_vote")
    voted.load_state_dict(per_sample.state_dict())
    with torch.no_grad():       # samples 0-2 point at keys 0 and 1, sample 3 at keys 2 and 3
        keys = torch.stack([q[0] + q[1] + q[2], q[0] + q[1] + q[2] + 0.01 * q[3], q[3], q[3] + 0.01])
        per_sample.keys.copy_(keys)
        voted.keys.copy_(keys)
    assert per_sample.selection == "per_sample"                          # the default stays honest
    assert sorted(per_sample.prompter(q).selected[3].tolist()) == [2, 3]
    plan = voted.prompter(q)
    assert all(sorted(row) == [0, 1] for row in plan.selected.tolist())   # sample 3 outvoted
    assert torch.equal(plan.prepend[3], plan.prepend[0])
    cos = F.cosine_similarity(q[:, None], voted.keys[None], dim=-1)
    torch.testing.assert_close(plan.matching_loss, (1 - cos.gather(1, plan.selected)).sum(1).mean())
    with pytest.raises(ValueError, match="selection must be one of"):
        L2PPromptPool(64, 4, selection="majority")


def test_dualprompt_batch_vote_acts_at_test_time_only():
    pool = DualPromptPool(64, 4, g_layers=(0,), e_layers=(1,), g_length=2, e_length=2, selection="batch_vote")
    pool.grow()
    pool.grow()
    torch.manual_seed(1)
    q = torch.randn(3, 64)
    with torch.no_grad():
        pool.e_keys[0].copy_(q[0] + q[1])                             # samples 0, 1 -> E-prompt 0; 2 -> 1
        pool.e_keys[1].copy_(q[2])
    own_choice = F.cosine_similarity(q[:, None], torch.stack(list(pool.e_keys))[None], dim=-1).argmax(1)
    assert own_choice.tolist() == [0, 0, 1]
    assert pool.prompter(q).selected.squeeze(1).tolist() == [0, 0, 0]       # the vote overrides sample 2
    assert pool.prompter(q, task=1).selected.squeeze(1).tolist() == [1, 1, 1]   # training: the task's own
    pool.selection = "per_sample"
    assert pool.prompter(q).selected.squeeze(1).tolist() == own_choice.tolist()


@pytest.fixture(scope="module")
def trained_l2p():
    """L2P trained as its reference port trains it (batch vote) on the offline stream, 5 experiences x 2 classes."""
    from avalanche_convprompt.data.offline_backbone import create_offline_backbone
    from avalanche_convprompt.data.streams import synthetic_stream
    stream = synthetic_stream(n_experiences=5, classes_per_experience=2, train_per_class=40, test_per_class=30,
                              seed=0)
    torch.manual_seed(0)
    strategy = L2P(backbone=create_offline_backbone(), lr=0.01, train_mb_size=32, train_epochs=2, eval_mb_size=30,
                   selection="batch_vote", device="cpu", evaluator=default_cl_evaluator(loggers=[]))
    run_stream(strategy, stream.benchmark, progress=False)
    return strategy, stream


def stream_accuracy(metrics):
    return next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream"))


def _accuracy(net, batches):
    correct = total = 0
    net.eval()
    with torch.no_grad():
        for x, y in batches:
            correct += int((net(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def test_batch_vote_leaks_the_task_of_single_task_test_batches(trained_l2p):
    """The same trained model, tested per experience (Avalanche's way) and on shuffled mixed-task batches.

    Batch vote helps only when a batch holds one task: then the majority's
    prompts suit the task of everyone in it. Shuffle the test set across tasks
    and the gain is gone; per-sample selection does not care how batches are
    made. The batch-vote gain is the task identity leaking through the batch.
    """
    strategy, stream = trained_l2p
    net, pool = strategy.net, strategy.prompt_pool
    tests = [[exp.dataset[i] for i in range(len(exp.dataset))] for exp in stream.benchmark.test_stream]
    single_task = [(torch.stack([x for x, *_ in t]), torch.tensor([y for _, y, *_ in t])) for t in tests]
    xs, ys = torch.cat([x for x, _ in single_task]), torch.cat([y for _, y in single_task])
    order = torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))
    mixed = [(xs[order[i:i + 30]], ys[order[i:i + 30]]) for i in range(0, len(ys), 30)]
    acc = {}
    for selection in ("per_sample", "batch_vote"):
        pool.selection = selection
        acc[selection] = (_accuracy(net, single_task), _accuracy(net, mixed))
    pool.selection = "per_sample"
    per_single, per_mixed = acc["per_sample"]
    vote_single, vote_mixed = acc["batch_vote"]
    assert per_single == pytest.approx(per_mixed)                 # per sample: batching is irrelevant
    # measured: per sample 74.7 either way; vote 77.7 on single-task batches, 73.3 on mixed ones
    assert vote_single > per_single + 2.0                         # the vote looks better on single-task batches...
    assert vote_mixed < vote_single - 3.0                         # ...only because those batches name their task:
    assert vote_mixed < per_mixed                                 # mixed, it is worse than choosing per sample
    # Avalanche's own evaluation (one experience at a time, one batch per experience) shows the same inflation
    strategy.eval_mb_size = len(tests[0])
    pool.selection = "batch_vote"
    voted = stream_accuracy(strategy.eval(stream.benchmark.test_stream))
    pool.selection = "per_sample"
    honest = stream_accuracy(strategy.eval(stream.benchmark.test_stream))
    assert voted > honest


# --------------------------------------------------- DualPrompt shared pool
def test_shared_prompt_pool_starts_each_e_prompt_as_a_copy_of_the_previous_and_its_key_fresh():
    """JH-LEE-KR/dualprompt-pytorch: shared_prompt_pool True copies the E-prompt; shared_prompt_key False."""
    shared = DualPromptPool(64, 4, g_layers=(0,), e_layers=(1, 2), g_length=2, e_length=3, shared_prompt_pool=True)
    shared.grow()
    with torch.no_grad():
        shared.e_prompts[0].add_(1.0)                         # "trained" during experience 0
        shared.e_keys[0].mul_(2.0)
    shared.grow()
    assert torch.equal(shared.e_prompts[1], shared.e_prompts[0])
    assert not torch.equal(shared.e_keys[1], shared.e_keys[0])                  # the key starts fresh
    assert float(shared.e_keys[1].abs().max()) <= 1.0 < float(shared.e_keys[0].abs().max())   # uniform(-1, 1)
    assert shared.e_prompts[1] is not shared.e_prompts[0]
    assert not shared.e_prompts[0].requires_grad and shared.e_prompts[1].requires_grad
    with torch.no_grad():
        shared.e_prompts[1].add_(1.0)                         # training the copy leaves the original alone
    assert not torch.equal(shared.e_prompts[1], shared.e_prompts[0])
    fresh = DualPromptPool(64, 4, g_layers=(0,), e_layers=(1, 2), g_length=2, e_length=3)
    fresh.grow()
    fresh.grow()
    assert not torch.equal(fresh.e_prompts[1], fresh.e_prompts[0])     # default: a random start
    keyed = DualPromptPool(64, 4, g_layers=(0,), e_layers=(1,), e_length=3, shared_prompt_pool=True,
                           shared_prompt_key=True)                     # the option the reference leaves off
    keyed.grow()
    keyed.grow()
    assert torch.equal(keyed.e_keys[1], keyed.e_keys[0]) and torch.equal(keyed.e_prompts[1], keyed.e_prompts[0])
    assert reference_recipe("dualprompt", "split_cifar100").kwargs.get("shared_prompt_key", False) is False


# ------------------------------------------------------------ CODA-Prompt
def test_coda_orthogonality_is_a_mean_per_matrix():
    """Rows orthonormal, then scaled by s: X X^T - I = (s^2 - 1) I, whose mean square is (s^2 - 1)^2 / M."""
    torch.manual_seed(3)
    D, per_task, tasks = 2, 3, 2
    pool = CodaPromptPool(64, 4, prompt_layers=(0, 1), components_per_task=per_task, prompt_length=4)
    for _ in range(tasks):
        pool.grow()
    assert float(pool.orthogonality_loss().detach()) < 1e-8
    s, M = 2.0, per_task * tasks
    with torch.no_grad():
        for p in [*pool.components, *pool.keys, *pool.attention]:
            p.mul_(s)
    expected = 3 * D * (s * s - 1) ** 2 / M                # 3 matrices (P, K, A) x D layers
    assert float(pool.orthogonality_loss().detach()) == pytest.approx(expected, rel=1e-5)


class LearningRates(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.seen = []

    def before_training_iteration(self, strategy, **kwargs):
        self.seen.append(strategy.optimizer.param_groups[0]["lr"])


def test_epoch_quarter_cosine_is_constant_within_an_epoch_and_ends_near_1_6_percent():
    train, test = blob_datasets([0, 1], train_per_class=16)            # 32 images: 2 iterations per epoch
    bm = class_incremental_benchmark({"train": train, "test": test}, num_experiences=1)
    rates = LearningRates()
    strategy = CodaPrompt(backbone=tiny_vit(), prompt_layers=(0,), components_per_task=2, prompt_length=2,
                          lr=0.1, lr_schedule="epoch_quarter_cosine", clip_grad_norm=None, train_mb_size=16,
                          train_epochs=3, device="cpu", evaluator=None, plugins=[rates])
    strategy.train(bm.train_stream[0])
    factors = [1.0, math.cos(math.pi / 2 * 0.99 * 0.5), math.cos(math.pi / 2 * 0.99)]
    assert rates.seen == pytest.approx([0.1 * f for f in factors for _ in range(2)])
    assert factors[-1] == pytest.approx(0.0157, abs=1e-4)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        CodaPrompt(backbone=tiny_vit(), prompt_layers=(0,), lr_schedule="linear", device="cpu", evaluator=None)


# --------------------------------------------------------------- recipes
def test_reference_recipes_hold_the_published_settings():
    dp_c, dp_r = reference_recipe("dualprompt", "split_cifar100"), reference_recipe("dualprompt", "split_imagenet_r")
    assert (dp_c.kwargs["e_length"], dp_c.kwargs["base_lr"], dp_c.kwargs["train_epochs"]) == (5, 0.03, 5)
    assert (dp_r.kwargs["e_length"], dp_r.kwargs["base_lr"], dp_r.kwargs["train_epochs"]) == (20, 0.005, 50)
    assert dp_c.kwargs["shared_prompt_pool"] and dp_r.kwargs["shared_prompt_pool"]
    assert (dp_c.published_selection, dp_r.published_selection) == ("batch_vote", "per_sample")
    l2p = reference_recipe("l2p", "split_cifar100")
    assert (l2p.kwargs["train_epochs"], l2p.kwargs["base_lr"], l2p.kwargs["lr_schedule"]) == (5, 0.03, "constant")
    assert l2p.published_selection == "batch_vote"
    for benchmark, epochs in (("split_cifar100", 20), ("split_imagenet_r", 50)):
        coda = reference_recipe("coda", benchmark).kwargs
        assert (coda["train_epochs"], coda["clip_grad_norm"], coda["lr_schedule"]) == \
            (epochs, None, "epoch_quarter_cosine")
        assert coda["base_lr"] * coda["train_mb_size"] / 256 == pytest.approx(0.001)
    backbones = {"l2p": L2P_BACKBONE, "dualprompt": DUALPROMPT_BACKBONE, "coda": CODA_BACKBONE}
    for method, backbone in backbones.items():
        assert all(r.kwargs["backbone"] == backbone for r in REFERENCE_RECIPES[method].values())
    for recipe in REFERENCE_RECIPES["convprompt"].values():
        assert recipe.kwargs["backbone"] == CONVPROMPT_BACKBONE and recipe.kwargs["train_keys"] is False
    with pytest.raises(ValueError, match="L2P has no reference recipe for 'split_cub200'"):
        reference_recipe("l2p", "split_cub200")


@pytest.mark.parametrize("method", ["convprompt", "l2p", "dualprompt", "coda", "finetune", "joint"])
def test_every_reference_recipe_builds_and_reads_back(method):
    """Each recipe builds its strategy (on a small ViT) and resolved_recipe() reads every setting back."""
    kwargs = dict(reference_recipe(method, "split_cifar100").kwargs)
    kwargs.pop("backbone")
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=8, num_heads=4, num_classes=0)
    strategy = build_strategy(method, "reference", backbone=vit, device="cpu", evaluator=None, **kwargs)
    recipe = resolved_recipe(strategy)
    json.dumps(recipe)                                                 # a run record can hold it
    assert recipe["lr"] == pytest.approx(kwargs["base_lr"] * kwargs["train_mb_size"] / 256)
    for key in ("lr_schedule", "clip_grad_norm", "train_epochs", "train_mb_size"):
        assert recipe[key] == kwargs[key], key
    for key in ("e_length", "shared_prompt_pool", "train_keys", "prompt_length", "top_k", "components_per_task",
                "orthogonality_penalty", "matching_weight", "drift_penalty"):
        if key in kwargs:
            assert recipe[key] == kwargs[key], key


def test_runner_reference_protocol_records_each_methods_recipe(tmp_path):
    """``--protocol reference`` on a (fake) Split ImageNet-R: each method its own recipe, overrides recorded."""
    from benchmarks import run
    from avalanche_convprompt.language.descriptors.official_classes import IMAGENET_R_WNIDS
    from test_streams import _image_bytes, _imagenet_r_tree

    root = _imagenet_r_tree(tmp_path / "data", {w: 20 for w in IMAGENET_R_WNIDS[:4]}, _image_bytes())
    out = tmp_path / "bench"
    run.main(["--protocol", "reference", "--benchmark", "split_imagenet_r", "--data-root", root,
              "--backbone", "offline", "--strategy", "dualprompt", "coda", "--seeds", "0", "--experiences", "2",
              "--epochs", "1", "--batch", "8", "--split", "random", "--imagenet-r-subset", "--output", str(out),
              "--no-progress"])
    dual = json.loads((out / "runs" / "dualprompt_seed0.json").read_text())["config"]
    coda = json.loads((out / "runs" / "coda_seed0.json").read_text())["config"]
    assert dual["protocol"] == coda["protocol"] == "reference"
    assert dual["overrides"] == {"backbone": "offline", "train_epochs": 1, "train_mb_size": 8}
    recipe = dual["recipe"]
    assert (recipe["e_length"], recipe["shared_prompt_pool"], recipe["selection"]) == (20, True, "per_sample")
    assert recipe["lr"] == pytest.approx(0.005 * 8 / 256) and recipe["lr_schedule"] == "constant"
    assert recipe["backbone"] == "offline" and "configs/imr_dualprompt.py" in dual["recipe_source"]
    assert (coda["recipe"]["lr_schedule"], coda["recipe"]["clip_grad_norm"]) == ("epoch_quarter_cosine", None)
    assert coda["recipe"]["lr"] == pytest.approx(0.002 * 8 / 256)
    assert coda["overrides"] == {"backbone": "offline", "train_epochs": 1, "train_mb_size": 8, "split": "random"}
    assert coda["recipe"]["drop_last"] is True and dual["recipe"]["drop_last"] is False
    assert (coda["stream"]["pipeline"], dual["stream"]["pipeline"]) == ("coda", "vit")


def test_runner_protocol_choices_and_errors(capsys):
    from benchmarks import run
    with pytest.raises(SystemExit):
        run.parse_args(["--protocol", "reference", "--benchmark", "split_cub200", "--data-root", "x",
                        "--strategy", "convprompt", "l2p"])
    assert "L2P has no reference recipe for 'split_cub200'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.parse_args(["--selection", "as_published"])
    assert "needs --protocol reference" in capsys.readouterr().err
    args = run.parse_args(["--protocol", "reference", "--benchmark", "split_cifar100", "--data-root", "x",
                           "--selection", "as_published"])
    l2p, overrides = run.strategy_settings("l2p", args)
    assert l2p["selection"] == "batch_vote" and overrides == {"selection": "batch_vote"}
    assert run.strategy_settings("coda", args)[0] == dict(reference_recipe("coda", "split_cifar100").kwargs)
    assert run.parse_args([]).protocol == "offline"
    shared = run.parse_args(["--benchmark", "split_cifar100", "--data-root", "x"])
    assert shared.protocol == "shared"
    kwargs, overrides = run.strategy_settings("dualprompt", shared)
    assert kwargs == {"backbone": CONVPROMPT_BACKBONE, "train_epochs": 10, "train_mb_size": 128, "lr": None}
    keys = run.parse_args(["--train-keys"])
    assert run.strategy_settings("convprompt", keys)[1] == {"train_keys": True}


def test_recipe_table_has_a_row_per_recipe_with_the_resolved_rate():
    from benchmarks.recipes import recipe_table
    table = recipe_table().splitlines()
    assert len(table) == 2 + sum(len(r) for r in REFERENCE_RECIPES.values())
    dual_cifar = next(line for line in table if line.startswith("| DualPrompt | CIFAR-100 |"))
    assert "| 24 | 0.03 x batch/256 = 0.002812 |" in dual_cifar and "e_length 5" in dual_cifar
    assert "batch_vote" in dual_cifar
    coda = next(line for line in table if line.startswith("| CODA-Prompt | ImageNet-R |"))
    assert "| 50 | 128 |" in coda and "epoch_quarter_cosine | none |" in coda
