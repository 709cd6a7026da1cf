"""Same seed, same machine: identical runs, language-model allocation included."""
import torch

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.language.descriptors import load_descriptors
from avalanche_convprompt.runs.determinism import seed_everything
from avalanche_convprompt.evaluation import default_cl_evaluator
from avalanche_convprompt.runs import run_stream
from avalanche_convprompt.language.allocation import LanguageModelAllocation, SentenceEncoder, class_descriptors
from avalanche_convprompt.data.offline_backbone import create_offline_backbone
from avalanche_convprompt.data.streams import synthetic_stream


def one_run(seed):
    seed_everything(seed)
    stream = synthetic_stream(n_experiences=3, classes_per_experience=2, train_per_class=12, test_per_class=6,
                              seed=seed)
    descriptors = class_descriptors(stream.class_keys, load_descriptors("synthetic"))
    policy = LanguageModelAllocation(descriptors, max_generators=5, encoder=SentenceEncoder())   # fresh encoder
    strategy = ConvPrompt(backbone=create_offline_backbone(), prompt_layers=(0, 1), prompt_length=4, kernel_size=3,
                          allocation=policy, lr=0.01, train_mb_size=8, train_epochs=1, eval_mb_size=64,
                          device="cpu", evaluator=default_cl_evaluator(loggers=[]))
    summary = run_stream(strategy, stream.benchmark, progress=False)
    return summary, strategy.model.state_dict()


def test_same_seed_same_machine_gives_identical_runs():
    (a, weights_a), (b, weights_b) = one_run(3), one_run(3)
    assert a.accuracy_matrix == b.accuracy_matrix
    assert a.average_forgetting == b.average_forgetting
    assert a.extra["allocation"] == b.extra["allocation"]          # similarities to the last bit
    assert [x["generators"] for x in a.extra["allocation"]][0] == 5
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    (c, weights_c) = one_run(4)                                     # and the seed matters
    assert c.extra["allocation"] != a.extra["allocation"] or c.accuracy_matrix != a.accuracy_matrix
