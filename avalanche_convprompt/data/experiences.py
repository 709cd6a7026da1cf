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

from typing import List, Optional

import torch


def _unique_ints(values) -> List[int]:
    """Sorted distinct ints of an Avalanche ``DataAttribute`` (its cached ``uniques``) or any sequence."""
    uniques = getattr(values, "uniques", None)
    if uniques is None:
        uniques = torch.as_tensor(values).unique().tolist() if len(values) else []
    return sorted(int(v) for v in uniques)


def describe_experience(experience) -> str:
    """``experience <index> of stream '<name>'``, for error messages."""
    stream = getattr(getattr(experience, "origin_stream", None), "name", None)
    index = getattr(experience, "current_experience", "?")
    return f"experience {index}" + (f" of stream '{stream}'" if stream else "")


def experience_classes(experience) -> List[int]:
    """Sorted class ids of ``experience``: its classes timeline, else its dataset's ``targets``."""
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is not None:
        return sorted(int(c) for c in classes)
    targets = getattr(experience.dataset, "targets", None)
    if targets is None:
        raise ValueError(
            f"{describe_experience(experience)} has no classes_in_this_experience and its dataset has no 'targets', so its "
            "classes are unknown: build the datasets as classification datasets (e.g. "
            "avalanche.benchmarks.utils.as_classification_dataset, or a torchvision dataset with .targets)")
    return _unique_ints(targets)


def experience_task_labels(experience) -> Optional[List[int]]:
    """Sorted task labels of ``experience``'s samples; ``None`` when its dataset carries none."""
    labels = getattr(experience.dataset, "targets_task_labels", None)
    return None if labels is None else _unique_ints(labels)
