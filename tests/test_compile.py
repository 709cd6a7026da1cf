"""``compile=True``: compiled backbone blocks match eager ones, and a growing pool never recompiles.

The compiled twins use Dynamo with the ``aot_eager`` backend wrapped in a graph
counter, not inductor: both trace the same graphs and AOTAutograd builds the same
backward, but inductor's C++ build takes about 70 s per run on the 2-core CI
machine. Strategies are built with ``compile=True`` (so the default backend,
inductor, is what users get) and their backend is swapped for the counter.
"""
import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from torch._dynamo.testing import CompileCounterWithBackend

from avalanche_convprompt import CodaPrompt, ConvPrompt, L2P
from avalanche_convprompt.models import compilation
from avalanche_convprompt.runs.checkpoint import maybe_load_checkpoint, save_checkpoint

from conftest import blob_datasets, tiny_vit

KWARGS = {
    ConvPrompt: dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3),
    CodaPrompt: dict(prompt_layers=(0, 1, 2), components_per_task=3, prompt_length=4),
}
# Graphs compiled in the first experience (training, then evaluation), from the guards of
# models/compilation.py; the batch axis is dynamic, so batch sizes 5, 3 (last) and 8 (eval) share graphs.
#  ConvPrompt (blocks 0-1 prefixed, 2-3 plain): training: prefixed block with tokens that need no gradient
#    (block 0), prefixed block with tokens that do (block 1: LayerNorms and prompts train), plain block
#    (blocks 2-3); evaluation, autograd off: prefixed and plain: 5.
#  CODA-Prompt (blocks 0-2 prefixed, 3 plain, frozen LayerNorms): training: the query pass (autograd
#    off, plain block), prefixed block 0 (tokens need no gradient), prefixed blocks 1-2, plain block 3;
#    evaluation: plain (query pass and block 3) and prefixed: 6.
FIRST_EXPERIENCE_GRAPHS = {ConvPrompt: 5, CodaPrompt: 6}


def stream():
    train, test = blob_datasets(list(range(6)), train_per_class=4, test_per_class=3)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=3, class_order=[4, 1, 5, 0, 2, 3])


def build(method, compile, counter=None):
    torch.manual_seed(0)
    strategy = method(backbone=tiny_vit(), lr=0.01, train_mb_size=5, train_epochs=1, eval_mb_size=8, device="cpu",
                      evaluator=None, compile=compile, **KWARGS[method])
    if compile:
        assert strategy.net.backbone.compile_backend == "inductor"
        strategy.net.backbone.compile_backend = counter
    return strategy


@pytest.fixture(scope="module", params=[ConvPrompt, CodaPrompt], ids=lambda m: m.__name__)
def twins(request):
    """An eager and a compiled strategy trained on the same three experiences; graphs counted after each."""
    method = request.param
    torch.compiler.reset()                 # counts start from an empty cache, whatever ran before
    counter = CompileCounterWithBackend("aot_eager")
    bm = stream()
    eager, compiled = build(method, False), build(method, True, counter)
    graphs = []
    for exp in bm.train_stream:
        for strategy in (eager, compiled):
            torch.manual_seed(exp.current_experience)          # same shuffling for both
            strategy.train(exp)
            strategy.eval(bm.test_stream[:exp.current_experience + 1])
        graphs.append(counter.frame_count)
    return dict(method=method, eager=eager, compiled=compiled, graphs=graphs, counter=counter, bm=bm)


def eval_logits(strategy, x):
    strategy.net.eval()
    with torch.no_grad():
        return strategy.net(x)


def test_pool_growth_compiles_no_graph_after_the_first_experience(twins):
    first = FIRST_EXPERIENCE_GRAPHS[twins["method"]]
    assert twins["graphs"] == [first, first, first]
    assert twins["counter"].frame_count == first


def test_compiled_training_ends_where_eager_training_does(twins):
    eager, compiled = twins["eager"].net.state_dict(), twins["compiled"].net.state_dict()
    assert eager.keys() == compiled.keys()
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6, msg=name)
    x = torch.stack([twins["bm"].test_stream[i].dataset[j][0] for i in range(3) for j in range(6)])
    torch.testing.assert_close(eval_logits(twins["compiled"], x), eval_logits(twins["eager"], x),
                               rtol=1e-5, atol=1e-6)


def test_compiled_logits_and_gradients_equal_eager(twins):
    """One training step's forward and backward after the pool grew twice: logits and every gradient agree."""
    data = twins["bm"].train_stream[2].dataset
    x = torch.stack([data[i][0] for i in range(6)])
    y = torch.tensor([data[i][1] for i in range(6)])
    results = []
    for strategy in (twins["eager"], twins["compiled"]):
        net = strategy.net
        net.train()
        net.zero_grad(set_to_none=True)
        logits = net(x)
        F.cross_entropy(logits[:, strategy.current_classes()], y - y.min()).backward()   # classes 2, 3 -> 0, 1
        results.append((logits.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
    (eager_logits, eager_grads), (logits, grads) = results
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys()
    trained = {n.split(".")[0] for n in grads}
    norms = {n for n in grads if n.startswith("backbone.") and ".norm" in n}
    assert trained == {"backbone", "prompt_module", "heads"} if twins["method"] is ConvPrompt \
        else trained == {"prompt_module", "heads"}
    assert bool(norms) == (twins["method"] is ConvPrompt)        # ConvPrompt trains the LayerNorms
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert twins["counter"].frame_count == FIRST_EXPERIENCE_GRAPHS[twins["method"]]     # no graph added


def test_checkpoints_move_between_compiled_and_eager_runs(twins, tmp_path):
    method, bm = twins["method"], twins["bm"]
    x = torch.stack([bm.test_stream[i].dataset[j][0] for i in range(3) for j in range(6)])
    for source, compile in ((twins["compiled"], False), (twins["eager"], True)):
        path = save_checkpoint(source, str(tmp_path / f"from_compiled_{not compile}.pt"))
        saved = torch.load(path, weights_only=True)["model"]
        assert not [k for k in saved if "_orig_mod" in k]
        assert saved.keys() == twins["eager"].net.state_dict().keys()
        fresh = build(method, compile, twins["counter"])
        fresh, start = maybe_load_checkpoint(fresh, path)
        assert start == 3
        torch.testing.assert_close(eval_logits(fresh, x), eval_logits(source, x), rtol=1e-5, atol=1e-6)
    assert twins["counter"].frame_count == FIRST_EXPERIENCE_GRAPHS[method]    # a fresh model reuses the graphs


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_compile_must_be_a_bool(value):
    with pytest.raises(TypeError, match=rf"^compile must be True or False, got {value!r} \({type(value).__name__}\)$"):
        ConvPrompt(backbone=tiny_vit(), compile=value, device="cpu", evaluator=None, **KWARGS[ConvPrompt])


def test_compile_where_torch_compile_cannot_run_says_why(monkeypatch):
    def unsupported():
        raise RuntimeError("Python 3.15+ not yet supported for torch.compile")

    monkeypatch.setattr(torch._dynamo.eval_frame, "check_if_dynamo_supported", unsupported)
    with pytest.raises(RuntimeError) as err:
        L2P(backbone=tiny_vit(), compile=True, device="cpu", evaluator=None)
    assert str(err.value) == ("compile=True needs torch.compile, which is unavailable here (Python 3.15+ not yet "
                              "supported for torch.compile); build the strategy with compile=False")
    assert L2P(backbone=tiny_vit(), compile=False, device="cpu", evaluator=None).net.backbone.compile_backend is None
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(RuntimeError, match=r"^compile=True needs torch.compile \(PyTorch >= 2.0\), this is PyTorch "):
        compilation.compile_backend(True)
