"""The network a prompt strategy trains: frozen prompted ViT, prompt module, heads.

``PromptedClassifier(x)`` = ``heads(backbone(x, prompts))``: logits indexed by
class id (``PromptedClassifier(x, task_labels)`` with task-incremental heads:
each sample's own task's head only). The backbone stays frozen except, when ``train_norms`` (ConvPrompt's
recipe), its LayerNorms (each block's ``norm1``/``norm2`` and the final ``norm``).

``prompt_module`` is one of

* a one-pass module (``needs_query = False``, e.g.
  :class:`~avalanche_convprompt.methods.convprompt.prompt_pool.ConvPromptPool`):
  ``prompter()`` gives a callable that each prompted block asks for its
  prefixes, queried by the class token inside the pass;
* a query-based module (``needs_query = True``: L2P, DualPrompt, CODA-Prompt):
  a first, gradient-free pass of the unprompted backbone gives the query
  ``q(x)``, then the prompted pass runs;
* ``None``: no prompts (the fine-tuning and joint-training bounds).

The :class:`~avalanche_convprompt.models.prompt_plan.PromptPlan` of the last forward
is kept in :attr:`PromptedClassifier.last_plan` so a strategy can add its
matching loss; copies (``copy.deepcopy``) and pickles of the model leave it out.

Inputs are images in ``[0, 1]`` (what ``transforms.ToTensor`` gives; the
published setup feeds them unnormalised) or uint8 tensors in ``0..255``, which
are scaled to ``[0, 1]`` first. ``input_mean``/``input_std``
(``normalize_inputs=True``) normalise them inside the model, so the images
passed in stay in ``[0, 1]`` either way.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .heads import TaskHeads
from .prompted_vit import PromptedViT

#: Images outside this range are taken for unscaled (0..255) or already normalised ones.
EXPECTED_RANGE = (-0.25, 1.25)


class InputRangeWarning(UserWarning):
    """Images reached the model outside ``[0, 1]`` (filter it with ``warnings.simplefilter``)."""


class PromptedClassifier(nn.Module):
    """Frozen prompted ViT + optional prompt module + one head per experience.

    Args:
        backbone: the prompted ViT.
        prompt_module: gives a prompter per forward pass, or ``None``.
        input_mean, input_std: when given, inputs are normalised with them
            inside the model (e.g. the statistics the timm weights expect).
        head_init: how each head's ``Linear`` starts (:data:`~avalanche_convprompt.models.heads.HEAD_INITS`).

    Images outside ``EXPECTED_RANGE`` (``[-0.25, 1.25]``: ``[0, 1]`` with room
    for interpolation overshoot) give one :class:`InputRangeWarning` per model.
    Only the first batch in training mode and the first in eval mode are
    checked, so the check costs one host-device synchronisation each, not one
    per batch.
    """

    def __init__(self, backbone: PromptedViT, prompt_module: Optional[nn.Module] = None,
                 input_mean: Optional[Sequence[float]] = None, input_std: Optional[Sequence[float]] = None,
                 train_norms: bool = True, head_norm: bool = True, head_init: str = "trunc_normal"):
        super().__init__()
        self.backbone = backbone
        self.prompt_module = prompt_module
        self.train_norms = train_norms
        self.heads = TaskHeads(backbone.embed_dim, norm=head_norm, init=head_init)
        self.last_plan = None
        self.register_load_state_dict_pre_hook(_grow_prompt_module_to_match_state_dict)
        self.task_hint: Optional[int] = None
        self._range_checked = set()          # the modes (training or not) whose first batch was checked
        if (input_mean is None) != (input_std is None):
            raise ValueError("give both input_mean and input_std, or neither")
        if input_mean is not None:
            self.register_buffer("input_mean", torch.tensor(input_mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("input_std", torch.tensor(input_std, dtype=torch.float32).view(1, -1, 1, 1))
        else:
            self.input_mean = self.input_std = None
        self.freeze_backbone()

    def __getstate__(self):
        """Copies and pickles leave out :attr:`last_plan`: its tensors belong to the last forward's autograd
        graph, which ``copy.deepcopy`` refuses (Avalanche's ``LwFPlugin`` copies the model after training)."""
        state = super().__getstate__()
        if state.get("last_plan") is not None:
            state = dict(state, last_plan=None)
        return state

    def trainable_norms(self) -> List[nn.Module]:
        """Each block's ``norm1`` and ``norm2`` and the final ``norm``."""
        vit = self.backbone.vit
        norms = [m for blk in vit.blocks for m in (blk.norm1, blk.norm2)]
        if any(True for _ in vit.norm.parameters()):
            norms.append(vit.norm)
        return norms

    def norm_parameters(self) -> List[nn.Parameter]:
        """The LayerNorm parameters the recipe trains (empty when ``train_norms`` is off)."""
        if not self.train_norms:
            return []
        return [p for m in self.trainable_norms() for p in m.parameters()]

    def freeze_backbone(self) -> None:
        """Freeze every backbone weight except the trainable LayerNorms."""
        self.backbone.requires_grad_(False)
        for p in self.norm_parameters():
            p.requires_grad_(True)

    def query(self, x: Tensor) -> Tensor:
        """``(B, C)`` pooled feature of the unprompted backbone, without gradient."""
        with torch.no_grad():
            return self.backbone(x)

    def check_range(self, x: Tensor) -> None:
        """Warn once if the first batch of training or of evaluation is not in ``[0, 1]``."""
        if self.training in self._range_checked:
            return
        self._range_checked.add(self.training)
        if x.numel() == 0:
            return
        low, high = (float(v) for v in torch.aminmax(x.detach().float()))
        if math.isnan(low) or math.isnan(high) or EXPECTED_RANGE[0] <= low <= high <= EXPECTED_RANGE[1]:
            return                                       # a NaN batch is the loss check's to report
        self._range_checked.update((True, False))       # one warning per model
        inside = ("normalised inside the model with the backbone's mean/std (normalize_inputs=True)"
                  if self.input_mean is not None else "fed to the backbone as they are (normalize_inputs=False)")
        warnings.warn(
            f"images in [{low:.3g}, {high:.3g}] reached the model, which expects [0, 1], {inside}: scale them to "
            "[0, 1] (transforms.ToTensor(), or pass uint8 tensors, which are scaled here) and leave out "
            "transforms.Normalize (normalize_inputs=True applies the backbone's statistics inside the model)",
            InputRangeWarning, stacklevel=3)

    def check_plan(self, plan) -> None:
        """Refuse a plan whose prompts would not reach the backbone (a silent no-op otherwise)."""
        name = type(self.prompt_module).__name__
        outside = sorted(set(plan.prefixes) - set(self.backbone.prompt_layers))
        if outside:
            raise ValueError(f"{name}'s PromptPlan has prefixes for blocks {outside}, which are not among the "
                             f"backbone's prompted layers {list(self.backbone.prompt_layers)}: list every block "
                             f"it prompts in {name}.prompt_layers")
        if not plan.prefixes and plan.prepend is None:
            raise ValueError(f"{name}'s PromptPlan carries neither prefixes nor prepended tokens: its prompts "
                             f"would change nothing")

    def forward(self, x: Tensor, task_labels: Optional[Tensor] = None) -> Tensor:
        """Logits indexed by class id; ``task_labels`` (task-incremental heads only) picks each sample's head."""
        x = self.backbone.as_input(x)                   # uint8 0..255 -> [0, 1], the backbone's dtype
        self.check_range(x)
        if self.input_mean is not None:
            x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        module = self.prompt_module
        self.last_plan = None
        if module is None or not module.ready:
            return self.heads(self.backbone(x), task_labels)
        if getattr(module, "needs_query", False):
            plan = module.prompter(self.query(x), task=self.task_hint if self.training else None)
            self.check_plan(plan)
            self.last_plan = plan
            features = self.backbone(x, plan if plan.prefixes else None, prepend=plan.prepend)
        else:
            features = self.backbone(x, module.prompter())
        return self.heads(features, task_labels)

    def parameter_breakdown(self) -> Dict[str, int]:
        """Learnable parameters by part, old (frozen) generators and heads included.

        Counts what the method creates and trains at some point: the frozen
        backbone weights are not counted, its trainable LayerNorms are.
        """
        parts: Dict[str, int] = {}
        pool = self.prompt_module
        if pool is not None and hasattr(pool, "parameter_breakdown"):
            parts.update(pool.parameter_breakdown())
        elif pool is not None:           # a prompt module that does not break its parameters down
            parts["prompts"] = sum(p.numel() for p in pool.parameters())
        if self.train_norms:
            parts["layer_norms"] = sum(p.numel() for p in self.norm_parameters())
        parts["heads"] = sum(p.numel() for p in self.heads.parameters())
        parts["total"] = sum(parts.values())
        return parts


def _grow_prompt_module_to_match_state_dict(net: "PromptedClassifier", state_dict, prefix: str, *args) -> None:
    """Load-time hook: call a growing prompt module's ``grow()`` until it holds every saved prompt tensor.

    So a method defined anywhere resumes from a checkpoint without a load hook of
    its own, as long as ``grow()`` adds parameters (e.g. to an ``nn.ParameterList``)
    rather than resizing them. Modules with their own load-time hook (the built-in
    pools) grow themselves. Bounded by the number of saved heads (one growth per
    experience at most); what still does not match is left to ``load_state_dict``'s
    error.
    """
    module = net.prompt_module
    grow = getattr(module, "grow", None)
    if grow is None or module._load_state_dict_pre_hooks:
        return
    saved = {k[len(prefix) + len("prompt_module."):] for k in state_dict
             if k.startswith(prefix + "prompt_module.")}
    saved_heads = sum(1 for k in state_dict if k.startswith(prefix + "heads.heads.") and k.endswith(".class_ids"))
    for _ in range(saved_heads):
        have = set(module.state_dict())
        if saved <= have:
            return
        grow()
        if set(module.state_dict()) == have:       # grow() added nothing: growing again would not help
            return
