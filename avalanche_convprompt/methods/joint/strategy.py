"""Joint training: the upper bound every continual method is compared against.

The trainable parts of :class:`~avalanche_convprompt.SequentialFineTuning`
(backbone LayerNorms and a ``LayerNorm + Linear`` head, no prompts), trained
once on the union of all training experiences, so nothing can be forgotten.
Call ``train`` once with the whole training stream, then evaluate on the test
stream: the accuracy matrix has one row (see
:func:`~avalanche_convprompt.evaluation.summarize_run`). With
``task_incremental=True`` it builds one head per experience's task label and
trains them all at once, each sample through its own task's head.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
from avalanche.benchmarks.utils.utils import concat_datasets
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ...data.experiences import experience_classes, experience_task_labels
from ...models.classifier import PromptedClassifier
from ...runs.distributed import unwrap
from ..template import PromptedViTTemplate, build_prompted_classifier


class JointTraining(PromptedViTTemplate):
    """Offline training on all experiences at once (not a continual method).

    Args mirror :class:`~avalanche_convprompt.SequentialFineTuning` (those of
    :class:`~avalanche_convprompt.ConvPrompt`'s network and training, defaults
    included); it has no arguments of its own.
    """

    #: Tells reports that the accuracy matrix has a single row and forgetting is undefined.
    is_joint = True
    #: ConvPrompt's schedule (its reference's per-epoch cosine), as every other setting of this bound
    default_lr_schedule = "epoch_cosine"

    def __init__(self, **kwargs):
        if kwargs.pop("cross_entropy_over", "seen") != "seen":
            raise ValueError("JointTraining always trains over every class of the stream (cross_entropy_over='seen')")
        self._joint_experiences: Optional[List] = None
        super().__init__(**kwargs)
        self.cross_entropy_over = "seen"      # what its loss covers (the one-class warning reads it)

    def build_network(self, backbone: Union[str, VisionTransformer], pretrained: bool,
                      normalize_inputs: bool) -> PromptedClassifier:
        return build_prompted_classifier(backbone, pretrained, None, normalize_inputs=normalize_inputs)

    def train(self, experiences, eval_streams=None, **kwargs):
        """Train once on the concatenation of ``experiences`` (a stream, a list or one experience)."""
        if self._joint_experiences is not None:
            raise RuntimeError("JointTraining trains once, on the whole stream; build a new strategy to train again")
        exps = [experiences] if hasattr(experiences, "dataset") else list(experiences)
        if not exps:
            raise ValueError("JointTraining got no experiences")
        self._joint_experiences = exps
        return super().train(exps[0], eval_streams=eval_streams, **kwargs)

    def check_plugins(self) -> None:
        """GDumb would replace the whole stream by its buffer of the first experience: refused."""
        super().check_plugins()
        if self.gdumb() is not None:
            raise ValueError("JointTraining trains once on the whole stream; a GDumbPlugin would replace that data "
                             "by its buffer of the first experience: leave GDumbPlugin out of JointTraining")

    def train_dataset_adaptation(self, **kwargs):
        """All experiences' training data as one dataset."""
        self.adapted_dataset = concat_datasets([e.dataset for e in self._joint_experiences]).train()

    def new_classes(self) -> List[int]:
        return sorted({c for e in self._joint_experiences for c in experience_classes(e)})

    def check_experience(self) -> None:
        """The template's checks on the union; task-incremental: one distinct task label per experience."""
        super().check_experience()
        if self.task_incremental:
            tasks = [self.check_task_labels(e, training=True)[0] for e in self._joint_experiences]
            repeated = sorted({t for t in tasks if tasks.count(t) > 1})
            if repeated:
                raise ValueError(f"task label(s) {repeated} appear in several experiences; task-incremental joint "
                                 "training needs a different task label in every experience")

    def model_adaptation(self, model=None):
        """Task-incremental: one head per experience, all of them trained."""
        if not (self.is_training and self.task_incremental):
            return super().model_adaptation(model)
        model = model if model is not None else self.model
        net = unwrap(model)
        for experience in self._joint_experiences:
            net.heads.add_head(experience_classes(experience), experience_task_labels(experience)[0])
        net.heads.requires_grad_(True)
        return model.to(self.device)

    def trainable_groups(self) -> List[Dict]:
        return [{"params": list(self.net.heads.parameters()), "lr": self.lr},
                {"params": self.net.norm_parameters(), "lr": self.lr}]

    def training_loss(self) -> Tensor:
        seen = torch.as_tensor(self.net.heads.seen_classes, device=self.mb_output.device)
        return self.masked_cross_entropy(seen)
