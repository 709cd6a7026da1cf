"""Bad input gets a clear error, and nothing is lost: one test per row of the README's table."""
import os
import re
import warnings

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin

from avalanche_convprompt import ConvPrompt, DualPrompt, L2P
from avalanche_convprompt.runs.checkpoint import checkpoint_files, load_checkpoint
from avalanche_convprompt.methods.convprompt.prompt_pool import ConvPromptPool
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.models.classifier import InputRangeWarning
from avalanche_convprompt.runs import run_stream

from conftest import blob_datasets, tiny_vit

TINY = dict(prompt_layers=(0, 1), prompt_length=4, kernel_size=3, train_mb_size=16, train_epochs=1,
            eval_mb_size=32, device="cpu", evaluator=None)


def benchmark(images=None, num_experiences=2):
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=8, test_per_class=4)
    if images is not None:
        x = images(len(train))
        train = _make_taskaware_tensor_classification_dataset(x, torch.as_tensor(train.targets))
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=num_experiences,
                                       class_order=[0, 1, 2, 3])


def test_images_of_the_wrong_size():
    bm = benchmark(lambda n: torch.rand(n, 3, 48, 48))
    strategy = ConvPrompt(backbone=tiny_vit(), **TINY)
    with pytest.raises(ValueError, match=r"backbone expects 32x32 images, got 48x48; resize the inputs"):
        strategy.train(bm.train_stream[0])


def test_images_with_the_wrong_channel_count():
    bm = benchmark(lambda n: torch.rand(n, 1, 32, 32))
    strategy = L2P(backbone=tiny_vit(), pool_size=4, prompt_length=2, top_k=2,
                   **{k: v for k, v in TINY.items() if k not in ("prompt_layers", "prompt_length", "kernel_size")})
    with pytest.raises(ValueError, match="backbone expects 3-channel images, got 1 channels"):
        strategy.train(bm.train_stream[0])


def test_a_label_outside_the_experiences_classes():
    class MislabelOne(SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            if strategy.clock.train_epoch_iterations == 1:
                strategy.mbatch[1] = strategy.mbatch[1].clone()
                strategy.mbatch[1][0] = 7

    bm = benchmark()
    strategy = ConvPrompt(backbone=tiny_vit(), plugins=[MislabelOne()], **dict(TINY, train_mb_size=4))
    with pytest.raises(ValueError, match=r"experience 0, iteration 1: labels \[7\] are not among the classes \[0, 1\]"):
        strategy.train(bm.train_stream[0])


def test_an_experience_whose_ids_restart_under_a_new_task_label_changes_nothing():
    """Repeated ids under a task label not seen before (ids restarting per task) are refused before any growth."""
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=8, test_per_class=4)
    bm = nc_benchmark(train, test, n_experiences=2, task_labels=True, class_ids_from_zero_in_each_exp=True,
                      shuffle=False)
    strategy = ConvPrompt(backbone=tiny_vit(), **TINY)
    strategy.train(bm.train_stream[0])
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"experience 1: classes \[0, 1\] were already learned .* task label\(s\) \[1\]"):
        strategy.train(bm.train_stream[1])
    after = strategy.model.state_dict()
    assert before.keys() == after.keys()                  # no generators or head were added on the way
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert strategy.prompt_pool.generators_per_task == [5]


def test_an_empty_experience():
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    train, _ = blob_datasets([0, 1])
    experience = benchmark_from_datasets(train=[train.subset([])]).train_stream[0]
    strategy = DualPrompt(backbone=tiny_vit(), g_layers=(0,), e_layers=(1,), g_length=2, e_length=2,
                          **{k: v for k, v in TINY.items() if k not in ("prompt_layers", "prompt_length",
                                                                         "kernel_size")})
    with pytest.raises(ValueError, match="experience 0 has no training samples"):
        strategy.train(experience)
    assert strategy.prompt_pool.num_tasks == 0 and len(strategy.net.heads) == 0


def test_a_kernel_larger_than_the_prompt_rows():
    with pytest.raises(ValueError, match="kernel_size 17 is larger than the head dimension 16"):
        ConvPrompt(backbone=tiny_vit(), **dict(TINY, kernel_size=17))
    with pytest.raises(ValueError, match="must be positive"):
        ConvPromptPool((0,), 4, 16, 64, prompt_length=0)


def test_prompt_layers_outside_the_backbone():
    with pytest.raises(ValueError, match=r"prompt layers \[4, 9\] are outside the backbone's blocks 0\.\.3"):
        ConvPrompt(backbone=tiny_vit(), **dict(TINY, prompt_layers=(0, 4, 9)))
    with pytest.raises(ValueError, match=r"prompt layers \[5\] are outside"):
        DualPrompt(backbone=tiny_vit(), e_layers=(2, 5), device="cpu", evaluator=None)


def test_a_backbone_that_is_not_a_vit():
    import timm
    with pytest.raises(TypeError, match="backbone must be a timm VisionTransformer"):
        ConvPrompt(backbone=timm.create_model("resnet18", pretrained=False, num_classes=0), **TINY)
    with pytest.raises(ValueError, match="timm cannot build backbone 'not_a_model'"):
        ConvPrompt(backbone="not_a_model", pretrained=False, **TINY)


def test_a_loss_that_becomes_nan_stops_with_where_and_keeps_the_checkpoint(tmp_path):
    class PoisonSecondExperience(SupervisedPlugin):
        def after_forward(self, strategy, **kwargs):      # finite images, NaN logits (NaN images: test_bad_input_more)
            if strategy.experience.current_experience == 1 and strategy.clock.train_epoch_iterations == 1:
                strategy.mb_output = torch.full_like(strategy.mb_output, float("nan"))

    bm = benchmark()
    strategy = ConvPrompt(backbone=tiny_vit(), plugins=[PoisonSecondExperience()],
                          **dict(TINY, train_mb_size=4, evaluator=default_cl_evaluator(loggers=[])))
    with pytest.raises(FloatingPointError, match=r"loss became nan in experience 1, epoch 0, iteration 1; training "
                                                 r"stopped before the update"):
        run_stream(strategy, bm, progress=False, checkpoint_dir=str(tmp_path))
    saved = checkpoint_files(str(tmp_path))
    assert [os.path.basename(p) for p in saved] == ["exp001.pt"]
    state = load_checkpoint(saved[0])
    assert state["completed_experiences"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # and the parameters of the first experience were not touched by the poisoned batch
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())


def test_a_results_folder_that_cannot_be_written(tmp_path):
    from benchmarks import run
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=r"results folder .*a_file/out.* cannot be written"):
        run.main(["--strategy", "convprompt", "--seeds", "0", "--output", str(blocker / "out"), "--no-progress"])


def test_test_labels_of_classes_not_trained_yet_count_as_errors_not_crashes():
    bm = benchmark()
    strategy = ConvPrompt(backbone=tiny_vit(), **dict(TINY, evaluator=default_cl_evaluator(loggers=[])))
    strategy.train(bm.train_stream[0])
    metrics = strategy.eval(bm.test_stream)                # experience 1's classes have no head yet
    assert metrics["Top1_Acc_Exp/eval_phase/test_stream/Exp001"] == 0.0


def _train_first_experience(images):
    """ConvPrompt trained on experience 0 of ``benchmark(images)``, from seed 0."""
    bm = benchmark(images)
    torch.manual_seed(0)
    strategy = ConvPrompt(backbone=tiny_vit(), **dict(TINY, train_mb_size=8))
    strategy.train(bm.train_stream[0])
    return strategy


def test_uint8_images_are_scaled_to_0_1_and_train_exactly_as_float_images():
    pixels = torch.randint(0, 256, (32, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    as_uint8 = _train_first_experience(lambda n: pixels[:n])
    as_float = _train_first_experience(lambda n: pixels[:n].float() / 255)
    for (name, a), b in zip(as_uint8.model.state_dict().items(), as_float.model.state_dict().values()):
        assert torch.equal(a, b), name                    # the same training, step for step
    as_uint8.model.eval()
    with torch.no_grad():
        assert torch.equal(as_uint8.model(pixels[:4]), as_uint8.model(pixels[:4].float() / 255))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.bool])
def test_images_of_other_integer_types_are_refused(dtype):
    model = ConvPrompt(backbone=tiny_vit(), **TINY).model
    with pytest.raises(TypeError, match=re.escape(
            f"images must be floating point (values in [0, 1]) or uint8 (0..255) tensors, got {dtype}; use "
            "x.to(torch.uint8) if they hold 0..255 pixel values, or transforms.ToTensor()")):
        model(torch.zeros(2, 3, 32, 32, dtype=dtype))


def _range_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, InputRangeWarning)]


def test_images_outside_0_1_give_one_warning_per_model():
    bm = benchmark(lambda n: torch.rand(n, 3, 32, 32) * 255)          # float pixels never scaled by ToTensor
    strategy = ConvPrompt(backbone=tiny_vit(), **dict(TINY, train_mb_size=4))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        strategy.train(bm.train_stream[0])                             # 4 batches
        strategy.train(bm.train_stream[1])
        strategy.eval(bm.test_stream)
    messages = _range_warnings(record)
    assert len(messages) == 1
    assert re.fullmatch(
        r"images in \[0(\.\d+)?(e-\d+)?, 25\d(\.\d+)?\] reached the model, which expects \[0, 1\], fed to the backbone "
        r"as they are \(normalize_inputs=False\): scale them to \[0, 1\] \(transforms.ToTensor\(\), or pass uint8 "
        r"tensors, which are scaled here\) and leave out transforms.Normalize \(normalize_inputs=True applies the "
        r"backbone's statistics inside the model\)", messages[0]), messages[0]


def test_the_first_evaluation_batch_is_checked_too_and_normalised_models_expect_0_1_as_well():
    vit = tiny_vit()
    vit.pretrained_cfg = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    strategy = ConvPrompt(backbone=vit, **dict(TINY, normalize_inputs=True))
    bm = benchmark()                                                    # training images in [0, 1]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        strategy.train(bm.train_stream[0])
    assert _range_warnings(record) == []
    normalised = (torch.rand(8, 3, 32, 32) - 0.5) / 0.5 * 1.5         # what transforms.Normalize gives, about
    strategy.model.eval()
    with warnings.catch_warnings(record=True) as record, torch.no_grad():
        warnings.simplefilter("always")
        strategy.model(normalised)
        strategy.model(normalised)
    messages = _range_warnings(record)
    assert len(messages) == 1 and "normalised inside the model with the backbone's mean/std (normalize_inputs=True)" \
        in messages[0]
