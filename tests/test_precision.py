"""The strategies' ``precision`` argument on CPU: bf16 autocast agrees with fp32, learns, keeps fp32 state;
fp16's gradient scaler skips an overflowing step; bad values are refused.

How close bf16 must be to fp32 (:func:`bf16_bound`). Rounding a value to ``p``
significant bits (bfloat16: ``p = 8``, unit roundoff ``u = 2**-8``) makes a
relative error of at most ``2**-p``; for a significand uniform in ``[1, 2)`` its
rms is ``2**(1 - p) / sqrt(24)``, which is 0.41u for bf16. Under autocast a matrix
product (linear, conv, matmul) rounds both inputs to bf16, accumulates in fp32
(error ~2**-24, negligible) and rounds its output to bf16: three roundings,
``sqrt(3) x 0.41u = 0.71u`` relative rms, counted as ``u``. The other operations
(LayerNorm, softmax, normalisation, the loss) run in fp32 under CPU autocast.
Independent errors of ``S`` such stages in series add in quadrature, so a tensor
``S`` stages deep is held to a relative rms error of ``sqrt(S) * u``. That count
ignores what helps (LayerNorm and the residual stream damp earlier errors), so it
is generous: measured, the logits of the 6-block backbone (S = 38, bound 6.2u)
are 1.2u off and the prompts (S = 4..23, bounds 2.0u..4.8u) 1.1u..1.7u off. It is
still tight enough to reject a wrong cast: one more rounding to float8 e4m3
(``p = 4``: 6.5u rms on its own, 6.8u..7.0u measured) fails every bound used
here, which each test checks.
"""
import math
import warnings

import pytest
import torch
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.data.offline_backbone import create_offline_backbone
from avalanche_convprompt.data.streams import synthetic_stream
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.methods import build_strategy
from avalanche_convprompt.methods.precision import PRECISIONS, check_supported, resolve_precision
from avalanche_convprompt.runs import run_stream

from conftest import tiny_vit

U = 2.0 ** -8                   # bf16 unit roundoff
STAGES_PER_BLOCK = 6            # matrix products in a ViT block: qkv, q @ k^T, attention @ v, proj, fc1, fc2
PROMPT_STAGES = 4               # ConvPrompt's own: generator conv, matcher, cosine to the keys, mixing


def relative_rms(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.float() - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt())


def bf16_bound(stages: int) -> float:
    """Relative rms error of a tensor ``stages`` bf16 matrix products deep (module docstring)."""
    return math.sqrt(stages) * U


def fp8(t: torch.Tensor) -> torch.Tensor:
    """A wrong cast: 3 significant bits instead of 8 (the control the bound must reject).

    float8_e5m2 rather than e4m3: one rounding to 4 bits (relative rms about 2**-4 / sqrt(12) * 1.4)
    lands right at the bound of a 38-stage-deep tensor, so it could not tell a wrong cast from a right one.
    """
    return t.to(torch.float8_e5m2).float()


def one_experience(n: int, classes: int):
    """An experience of ``n`` random 32 px images of ``classes`` classes."""
    data = _make_taskaware_tensor_classification_dataset(torch.rand(n, 3, 32, 32), torch.arange(n) % classes)
    return benchmark_from_datasets(train=[data], test=[data]).train_stream[0]


def tiny_convprompt(precision: str, **kwargs):
    torch.manual_seed(0)
    return ConvPrompt(backbone=tiny_vit(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3, train_epochs=1,
                      device="cpu", evaluator=None, precision=precision, **kwargs)


def grown_convprompt(precision="32"):
    """ConvPrompt on the shipped 6-block backbone as in its second experience (two heads, 10 generators)."""
    torch.manual_seed(0)
    strategy = ConvPrompt(backbone=create_offline_backbone(), pretrained=False, device="cpu", evaluator=None,
                          train_mb_size=16, precision=precision)
    net = strategy.net
    for t in range(2):
        net.heads.add_head(range(10 * t, 10 * t + 10))
        net.prompt_module.add_generators(5)
    return strategy


def capture_prompts(pool, into: list):
    """Wrap ``pool.prompter`` so that every prompt it hands out is recorded."""
    make = pool.prompter

    def prompter():
        prompts = make()

        def call(block, query):
            key, value = prompts(block, query)
            into.append((block, key, value))
            return key, value
        return call
    pool.prompter = prompter


def test_bf16_prompts_and_logits_agree_with_fp32_within_the_rounding_bound():
    strategy = grown_convprompt()
    net = strategy.net.eval()
    x = torch.rand(16, 3, *net.backbone.vit.patch_embed.img_size, generator=torch.Generator().manual_seed(1))
    strategy.mbatch = [x, torch.zeros(16, dtype=torch.long), torch.zeros(16, dtype=torch.long)]
    fp32_prompts, bf16_prompts = [], []
    with torch.no_grad():
        capture_prompts(net.prompt_module, fp32_prompts)
        exact = strategy.forward()
        del net.prompt_module.prompter
        strategy.precision = "bf16"
        capture_prompts(net.prompt_module, bf16_prompts)
        logits = strategy.forward()
    assert logits.dtype == torch.float32                       # cast back for Avalanche's metrics and the loss
    depth = len(net.backbone.vit.blocks)
    bound = bf16_bound(2 + STAGES_PER_BLOCK * depth)          # patch embedding, the blocks, the head
    error = relative_rms(logits, exact)
    assert 0 < error <= bound, (error / U, bound / U)          # > 0: autocast really ran
    assert relative_rms(fp8(logits), exact) > bound
    assert [b for b, *_ in bf16_prompts] == list(net.prompt_module.prompt_layers)
    for (block, key, value), (_, key32, value32) in zip(bf16_prompts, fp32_prompts):
        assert key.dtype == value.dtype == torch.bfloat16      # the prompt path itself runs in bf16
        # the query of block b is the class token after b blocks (and, past block 0, the patch embedding)
        bound = bf16_bound(PROMPT_STAGES + STAGES_PER_BLOCK * block + (block > 0))
        for got, want in ((key, key32), (value, value32)):
            error = relative_rms(got, want)
            assert 0 < error <= bound, (block, error / U, bound / U)
            assert relative_rms(fp8(got), want) > bound


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_parameters_gradients_and_adam_state_stay_fp32(precision):
    strategy = tiny_convprompt(precision, train_mb_size=8)
    seen = {}

    class Inspect(SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            head = strategy.net.heads.heads[-1]
            self.hook = head.register_forward_hook(lambda _m, _i, out: seen.__setitem__("head", out.dtype))

        def after_forward(self, strategy, **kwargs):
            self.hook.remove()
            seen["output"] = strategy.mb_output.dtype

        def after_backward(self, strategy, **kwargs):
            seen["grads"] = {p.grad.dtype for g in strategy.optimizer.param_groups for p in g["params"]
                             if p.grad is not None}
    strategy.plugins.append(Inspect())
    strategy.train(one_experience(8, 4))
    assert seen["head"] == (torch.bfloat16 if precision == "bf16" else torch.float16)   # autocast ran
    assert seen["output"] == torch.float32                       # the logits the strategy hands on
    assert seen["grads"] == {torch.float32}
    assert {p.dtype for p in strategy.net.parameters()} == {torch.float32}
    state = [s for s in strategy.optimizer.state.values() if s]
    assert state and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in state)


def accuracy_in_bf16(method: str, stream) -> float:
    torch.manual_seed(0)
    strategy = build_strategy(method, "offline", backbone=create_offline_backbone(), lr=0.01, train_mb_size=32,
                              train_epochs=1, eval_mb_size=128, device="cpu", precision="bf16",
                              evaluator=default_cl_evaluator(loggers=[]))
    assert strategy.precision == "bf16"
    return run_stream(strategy, stream.benchmark, method, progress=False).average_accuracy


def test_convprompt_and_l2p_learn_in_bf16():
    # measured (this seed, bf16): ConvPrompt 68.3%, L2P 45.0% (and fine-tuning 90.0%) against 16.7% chance
    stream = synthetic_stream(n_experiences=2, classes_per_experience=3, train_per_class=20, test_per_class=10,
                              seed=0)
    chance = 100.0 / 6
    assert accuracy_in_bf16("convprompt", stream) > 3 * chance
    assert accuracy_in_bf16("l2p", stream) > 2 * chance


class ForceOverflow(SupervisedPlugin):
    """Makes the first iteration's gradients infinite and records each update's effect."""

    def __init__(self):
        super().__init__()
        self.records = []

    def before_backward(self, strategy, **kwargs):
        self.before = [p.detach().clone() for g in strategy.optimizer.param_groups for p in g["params"]]
        if strategy.clock.train_exp_iterations == 0:
            weight = list(strategy.net.heads.heads[-1].parameters())[-1]
            self.hook = weight.register_hook(lambda grad: grad * float("inf"))

    def after_backward(self, strategy, **kwargs):
        if getattr(self, "hook", None) is not None:
            self.hook.remove()
            self.hook = None

    def after_update(self, strategy, **kwargs):
        after = [p.detach() for g in strategy.optimizer.param_groups for p in g["params"]]
        self.records.append({
            "unchanged": all(torch.equal(a, b) for a, b in zip(after, self.before)),
            "scale": strategy.scaler.get_scale(), "skipped": strategy.skipped_steps,
            "adam_steps": sorted({int(s["step"]) for s in strategy.optimizer.state.values() if s}),
            "lr": strategy.optimizer.param_groups[0]["lr"], "loss": float(strategy.loss.detach())})


def test_fp16_overflow_skips_the_step_lowers_the_scale_and_the_next_step_updates():
    overflow = ForceOverflow()
    # the per-iteration cosine: with one epoch the default (per-epoch) schedule would never move the rate
    strategy = tiny_convprompt("16", train_mb_size=8, plugins=[overflow], lr_schedule="cosine")
    with warnings.catch_warnings():     # nor torch's warning about a scheduler step without an optimizer step
        warnings.filterwarnings("error", message="Detected call of")
        strategy.train(one_experience(24, 4))
    first, second, third = overflow.records
    assert math.isfinite(first["loss"])                         # the loss was fine: the guard did not fire
    assert first["unchanged"] and first["adam_steps"] == [] and first["skipped"] == 1
    assert first["scale"] == 2.0 ** 15                          # halved from 2**16
    assert not second["unchanged"] and second["adam_steps"] == [1] and second["skipped"] == 1
    assert second["scale"] == third["scale"] == 2.0 ** 15
    assert third["adam_steps"] == [2]
    # the cosine schedule follows the iterations, skipped one included: it ends at 0 after the third
    assert first["lr"] > second["lr"] > third["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_a_nan_loss_still_stops_training_in_mixed_precision(precision):
    class Poison(SupervisedPlugin):
        def after_forward(self, strategy, **kwargs):        # finite images, NaN logits (NaN images: their own error)
            strategy.mb_output = strategy.mb_output * float("nan")

    strategy = tiny_convprompt(precision, train_mb_size=4, plugins=[Poison()])
    with pytest.raises(FloatingPointError, match=r"loss became nan in experience 0, epoch 0, iteration 0"):
        strategy.train(one_experience(4, 4))


def test_precision_values_and_spellings():
    assert PRECISIONS == ("32", "bf16", "16")
    for spelling, name in (("32", "32"), (32, "32"), ("fp32", "32"), ("bf16", "bf16"), ("bf16-mixed", "bf16"),
                           ("16", "16"), (16, "16"), ("16-mixed", "16"), ("fp16", "16")):
        assert resolve_precision(spelling) == name
    assert tiny_convprompt("bf16-mixed").precision == "bf16"
    message = ("precision must be one of '32', 'bf16', '16' (also spelled 'fp32', '32-true', 'bf16-mixed', "
               "'16-mixed', 'fp16'), got 'fp8'")
    with pytest.raises(ValueError) as err:
        tiny_convprompt("fp8")
    assert str(err.value) == message
    with pytest.raises(ValueError, match=r"got True$"):
        resolve_precision(True)
    # a device without autocast is refused rather than run in fp32 under a bf16 label
    with pytest.raises(ValueError) as err:
        check_supported("bf16", "meta")
    assert str(err.value) == "precision='bf16': torch has no autocast for device type 'meta'; use precision='32'"
    check_supported("32", "meta")


def test_runner_and_quickstart_take_precision_and_their_records_hold_it(tmp_path):
    import importlib.util
    import json
    import os
    from benchmarks import run
    small = ["--experiences", "2", "--epochs", "1", "--train-per-class", "8", "--test-per-class", "4"]
    out = tmp_path / "bench"
    run.main(["--strategy", "convprompt", "--seeds", "0", "--precision", "bf16", "--output", str(out),
              "--no-progress", *small])
    record = json.loads((out / "runs" / "convprompt_seed0.json").read_text())
    assert record["config"]["precision"] == record["config"]["recipe"]["precision"] == "bf16"
    assert "| ConvPrompt (bf16) | 0 (permuted) |" in (out / "results.md").read_text()
    # an fp32 seed beside it: --resume refuses the finished bf16 seed under other settings before any training,
    # and even when told to go on, the report refuses to average the two precisions
    with pytest.raises(ValueError, match=r"convprompt seed 0 finished under other settings than this command's: "
                                         r"precision 'bf16' -> '32' \(record -> now\)"):
        run.main(["--strategy", "convprompt", "--seeds", "0", "1", "--resume", "--output", str(out),
                  "--no-progress", *small])
    with pytest.raises(ValueError, match=r"runs of 'convprompt' mix precisions 'bf16' and '32'; report them from "
                                         r"separate folders"):
        run.main(["--strategy", "convprompt", "--seeds", "0", "1", "--resume", "--allow-changed-settings",
                  "--output", str(out), "--no-progress", *small])

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "quickstart.py")
    spec = importlib.util.spec_from_file_location("quickstart", path)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    args = quickstart.parse_args(["--allocation", "fixed", "--precision", "16", *small])
    for method in ("convprompt", "finetune"):        # what main() trains (its results.json config is vars(args))
        assert quickstart.make_strategy(method, args, None, stream=None).precision == "16"
