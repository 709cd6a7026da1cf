"""End to end on the offline stream with the shipped pretrained backbone."""
import json

import pytest
import torch

from avalanche_convprompt import ConvPrompt, SequentialFineTuning
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.data.offline_backbone import create_offline_backbone
from avalanche_convprompt.data.streams import synthetic_stream


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(n_experiences=3, classes_per_experience=3, train_per_class=40, test_per_class=20, seed=0)


def run(method, stream, seed=0):
    torch.manual_seed(seed)
    common = dict(backbone=create_offline_backbone(), lr=0.01, train_mb_size=32, train_epochs=2, eval_mb_size=128,
                  device="cpu", evaluator=default_cl_evaluator(loggers=[]))
    if method == "convprompt":
        strategy = ConvPrompt(prompt_layers=(0, 1, 2, 3), prompt_length=8, kernel_size=9, **common)
    else:
        strategy = SequentialFineTuning(**common)
    return run_stream(strategy, stream.benchmark, method, progress=False)


def test_convprompt_learns_and_forgets_less_than_finetuning(stream):
    # seeds 0-5 measured: ConvPrompt 77-94% accuracy, forgetting -3..20; fine-tuning forgetting 27-42
    convprompt, finetune = run("convprompt", stream), run("finetune", stream)
    chance = 100.0 / 9
    assert convprompt.average_accuracy > 3 * chance
    assert convprompt.average_forgetting < finetune.average_forgetting


def test_quickstart_command_writes_results_and_plots(tmp_path):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "quickstart.py")
    spec = importlib.util.spec_from_file_location("quickstart", path)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    out = tmp_path / "qs"
    results = quickstart.main(["--experiences", "2", "--train-per-class", "16", "--test-per-class", "8",
                               "--epochs", "1", "--output", str(out)])
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["summaries"].keys() == {"ConvPrompt", "Sequential fine-tuning"}
    conv = saved["summaries"]["ConvPrompt"]
    assert len(conv["accuracy_matrix"]) == 2
    allocation = conv["extra"]["allocation"]
    assert allocation[0]["generators"] == 5 and "similarity" in allocation[1]
    assert 1 <= allocation[1]["generators"] <= 5
    assert results["summaries"]["ConvPrompt"] == conv
    for png in ("quickstart.png", "allocation.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
