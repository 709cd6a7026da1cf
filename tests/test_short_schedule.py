"""The default rate warns when an experience is far shorter than the schedules its rule was tuned for."""
import math
import re
import warnings

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.methods import reference_recipe
from avalanche_convprompt.methods.short_schedule import ShortScheduleWarning, short_schedule_advice

from conftest import blob_datasets, tiny_vit

#: Training images per experience of the paper's benchmarks (10 experiences each): CIFAR-100 50,000 / 10;
#: ImageNet-R 24,000 / 10 on average, halved for its smallest experiences; CUB-200 5,994 / 10.
IMAGES_PER_EXPERIENCE = {"split_cifar100": 5000, "split_imagenet_r": 1200, "split_cub200": 599}


@pytest.mark.parametrize("benchmark", sorted(IMAGES_PER_EXPERIENCE))
def test_the_published_recipes_never_warn(benchmark):
    recipe = reference_recipe("convprompt", benchmark).kwargs
    batch, epochs = recipe["train_mb_size"], recipe["train_epochs"]
    lr = recipe["base_lr"] * batch / 256                               # what lr=None resolves to
    assert short_schedule_advice(lr, epochs, math.ceil(IMAGES_PER_EXPERIENCE[benchmark] / batch)) is None


def test_split_mnist_at_full_size_does_not_warn_and_a_few_hundred_images_do():
    lr = 0.005 * 32 / 256
    assert short_schedule_advice(lr, 3, math.ceil(12000 / 32)) is None         # 1,125 iterations
    assert short_schedule_advice(lr, 3, math.ceil(300 / 32)) == "pass lr=0.005 and train_epochs=10"   # 30 iterations
    assert short_schedule_advice(lr, 10, math.ceil(300 / 32)) == "pass lr=0.005"                     # 100 iterations
    assert short_schedule_advice(0.005, 3, 5) == "pass train_epochs=20"            # the rule gave 0.005 already


def stream():
    train, test = blob_datasets([0, 1, 2, 3], train_per_class=8, test_per_class=4)
    return class_incremental_benchmark({"train": train, "test": test}, num_experiences=2, class_order=[0, 1, 2, 3])


def train_two_experiences(**kwargs):
    bm = stream()
    strategy = ConvPrompt(backbone=tiny_vit(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3, train_mb_size=8,
                          train_epochs=3, device="cpu", evaluator=None, **kwargs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for experience in bm.train_stream:
            strategy.train(experience)
    return [str(w.message) for w in record if issubclass(w.category, ShortScheduleWarning)]


def test_a_short_experience_at_the_default_rate_warns_once_and_names_the_rate_to_pass():
    messages = train_two_experiences()
    assert len(messages) == 1
    assert re.fullmatch(
        r"ConvPrompt: experience 0 trains for 6 iterations \(3 epochs x 2 batches\) at the default rate "
        r"lr=0\.000156 \(base_lr x train_mb_size / 256\), whose rule was tuned for the paper's 190-1,500 iterations "
        r"per task: lr x iterations = 0\.000937, under 0\.1 \(the published recipes: 0\.14-1\.0\), and the new "
        r"classes will barely be learned; pass lr=0\.005 and train_epochs=50 "
        r"\(docs/avalanche.md, 'Small data, short schedules'\)", messages[0]), messages[0]


def test_a_rate_the_user_chose_never_warns():
    assert train_two_experiences(lr=0.0001) == []
    # an optimizer (its own rate) or an optimizer factory also means the user chose the rate
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0001)
    assert train_two_experiences(optimizer=sgd) == []
    assert train_two_experiences(optimizer_factory=lambda groups: torch.optim.SGD(groups)) == []


def test_the_small_data_measurement_runs_and_reports_the_warning(capsys):
    from benchmarks import small_data
    assert (small_data.render_digits(3, 2, "train") == small_data.render_digits(3, 2, "train")).all()
    runs = small_data.main(["--train-per-class", "4", "--test-per-class", "2", "--epochs", "1", "--lr", "default",
                            "0.005"])
    assert [len(r["accuracy_matrix"]) for r in runs] == [5, 5]
    assert [r["train_accuracy"][0]["iterations"] for r in runs] == [1, 1]
    assert "ConvPrompt: experience 0 trains for 1 iterations" in runs[0]["warnings"][0] and runs[1]["warnings"] == []
    assert "| 0.005 | 1 | 1 |" in capsys.readouterr().out
