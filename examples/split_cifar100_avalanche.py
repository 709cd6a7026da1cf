"""ConvPrompt in an ordinary Avalanche script: Split CIFAR-100, 10 experiences.

Everything but the strategy line is the usual Avalanche boilerplate; the
published recipe (batch 128, 10 epochs, lr 0.005 * 128 / 256, ViT-B/16 IN-21k)
is ConvPrompt's default. Needs CIFAR-100 under --data-root (Avalanche downloads
it when the machine has network access) and, realistically, a GPU:

    python examples/split_cifar100_avalanche.py --data-root ~/data --device cuda
"""
import argparse

import torch
from avalanche.benchmarks.classic import SplitCIFAR100
from avalanche.evaluation.metrics import accuracy_matrix_metrics, accuracy_metrics, forgetting_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin
from torchvision import transforms

from avalanche_convprompt import ConvPrompt
from avalanche_convprompt.evaluation import summarize_run

parser = argparse.ArgumentParser()
parser.add_argument("--data-root", default=None)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()

train_tf = transforms.Compose([transforms.RandomResizedCrop(224, scale=(0.05, 1.0)),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor()])
eval_tf = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                              transforms.CenterCrop(224), transforms.ToTensor()])
benchmark = SplitCIFAR100(n_experiences=10, seed=0, return_task_id=False, dataset_root=args.data_root,
                          train_transform=train_tf, eval_transform=eval_tf)

evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                             forgetting_metrics(experience=True, stream=True),
                             accuracy_matrix_metrics(), loggers=[InteractiveLogger()])

# the only ConvPrompt-specific line: a strategy like any other
strategy = ConvPrompt(backbone="vit_base_patch16_224.augreg_in21k", train_mb_size=128, train_epochs=10,
                      eval_mb_size=256, device=args.device, evaluator=evaluator)

for t, experience in enumerate(benchmark.train_stream):
    strategy.train(experience)
    strategy.eval(benchmark.test_stream[: t + 1])

summary = summarize_run(strategy)
print(summary.format_matrix())
print(f"average accuracy {summary.average_accuracy:.2f}%, forgetting {summary.average_forgetting:.2f}%")
