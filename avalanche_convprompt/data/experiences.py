"""The classes and task labels of an Avalanche experience, whichever benchmark builder made it.

``nc_benchmark``, ``class_incremental_benchmark`` and the ``Split*`` classics
give experiences a classes timeline (``classes_in_this_experience``);
``benchmark_from_datasets`` and ``task_incremental_benchmark`` do not (Avalanche
0.6 adds one only through ``with_classes_timeline``). Every part of this
package that needs an experience's classes asks :func:`experience_classes`,
which falls back to the unique values of the dataset's ``targets``: a data
attribute Avalanche keeps beside the samples, so no image is loaded.
"""
from __future__ import annotations

import numbers
from typing import List, Optional

import torch

MAX_CLASS_ID = 2 ** 20 - 1
"""Largest class id accepted. Logits are indexed by class id (one column per id up to the largest),
so an id of 10^9 would allocate gigabytes per batch; renumber such classes 0..N-1."""


def _unique_ints(values, what: str = "labels") -> List[int]:
    """Sorted distinct ints of an Avalanche ``DataAttribute`` (its cached ``uniques``) or any sequence.

    Non-integer values (float labels: Avalanche keeps them as they are, and ``int()`` would round
    them silently) are refused, naming ``what``.
    """
    if len(values) == 0:            # Avalanche's uniques of an empty attribute raise a bare IndexError
        return []
    uniques = getattr(values, "uniques", None)
    if uniques is None:
        uniques = torch.as_tensor(values).unique().tolist()
    wrong = [v for v in uniques if isinstance(v, bool) or not isinstance(v, numbers.Integral)
             and not (isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point()
                      and not v.is_complex() and v.dtype != torch.bool)]
    if wrong:
        shown = ", ".join(repr(v) for v in sorted(wrong, key=repr)[:5])
        raise ValueError(f"{what} must be integer ids, got {shown} ({type(wrong[0]).__name__}); convert the "
                         "dataset's targets to int (e.g. torch.as_tensor(targets).long(), after checking that "
                         "no value is fractional)")
    return sorted(int(v) for v in uniques)


def describe_experience(experience) -> str:
    """``experience <index> of stream '<name>'``, for error messages."""
    stream = getattr(getattr(experience, "origin_stream", None), "name", None)
    index = getattr(experience, "current_experience", "?")
    return f"experience {index}" + (f" of stream '{stream}'" if stream else "")


def experience_classes(experience) -> List[int]:
    """Sorted class ids of ``experience``: its classes timeline, else its dataset's ``targets``.

    Refuses (``ValueError`` naming the experience) non-integer labels and ids outside
    ``0..MAX_CLASS_ID``, before anything is sized by them.
    """
    where = describe_experience(experience)
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is not None:
        classes = _unique_ints(list(classes), f"{where}: labels")
    else:
        targets = getattr(experience.dataset, "targets", None)
        if targets is None:
            raise ValueError(
                f"{where} has no classes_in_this_experience and its dataset has no 'targets', so its "
                "classes are unknown: build the datasets as classification datasets (e.g. "
                "avalanche.benchmarks.utils.as_classification_dataset, or a torchvision dataset with .targets)")
        classes = _unique_ints(targets, f"{where}: labels")
    if classes and not 0 <= classes[0] <= classes[-1] <= MAX_CLASS_ID:
        bad = [c for c in classes if not 0 <= c <= MAX_CLASS_ID]
        raise ValueError(
            f"{where}: class ids {bad[:5]}{' ...' if len(bad) > 5 else ''} are outside 0..{MAX_CLASS_ID}; logits are "
            "indexed by class id, so renumber the classes 0..N-1 (e.g. nc_benchmark(..., "
            "class_ids_from_zero_from_first_exp=True))")
    return classes


def experience_task_labels(experience) -> Optional[List[int]]:
    """Sorted task labels of ``experience``'s samples; ``None`` when its dataset carries none."""
    labels = getattr(experience.dataset, "targets_task_labels", None)
    return None if labels is None else _unique_ints(labels, f"{describe_experience(experience)}: task labels")
