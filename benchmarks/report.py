"""From saved run records (one JSON per method x seed) to the comparison table and plots.

The runner writes one record per run into ``RESULTS_DIR/runs/*.json``; this module
aggregates them over seeds (mean and sample standard deviation), puts the published
numbers beside them, and renders ``results.md``, ``results.csv``,
``accuracy_curves.png`` and ``accuracy_matrices.png``. Every file is written
atomically, so re-rendering never leaves half a report behind.

    python -m benchmarks.report RESULTS_DIR             # re-render from RESULTS_DIR/runs/*.json
    python -m benchmarks.report RESULTS_DIR --out OTHER_DIR

A record (percent throughout)::

    {"method": "convprompt", "label": "ConvPrompt", "benchmark": "split_cifar100", "seed": 0,
     "accuracy_matrix": [[...], ...],   # T x T (row t: after training experience t); 1 x T for joint
     "average_accuracy": 68.3, "average_forgetting": 15.0,   # null for joint
     "learnable_parameters": 67220, "train_seconds": 35.1, "train_images_per_second": 70.2,
     "config": {...}}
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from avalanche_convprompt.evaluation.plots import _save, plt, seen_class_accuracy_curve
from avalanche_convprompt.evaluation.summary import reported_metrics
from avalanche_convprompt.methods import METHODS
from avalanche_convprompt.runs.files import atomic_path, ensure_writable_dir

# Every published number names its own source and test protocol: the baselines' numbers do not all come
# from one paper, and L2P's and DualPrompt's CIFAR-100 numbers were measured with a batch vote at test time
# (which the runs here do not use unless their recipe says so). Common to all of them: 10 tasks; accuracy on
# all seen classes after the last task / average forgetting (%).
PUBLISHED_COMMON = "10 tasks; accuracy on all seen classes after the last task / average forgetting (%)"

# source key -> full citation, saying whether the number is the paper's own result or a re-citation.
SOURCES: Dict[str, str] = {
    "wang2022_l2p": "Wang et al., L2P, CVPR 2022 (the original paper's own result)",
    "wang2022_dualprompt": "Wang et al., DualPrompt, ECCV 2022 (the original paper's own result)",
    "roy2024_cited": ("as cited by ConvPrompt (Roy et al., CVPR 2024): a re-citation, "
                      "not re-checked against the original paper"),
    "roy2024_convprompt": "Roy et al., ConvPrompt, CVPR 2024 (the paper's own result)",
}

BATCH_VOTE = "batch_vote"
PER_SAMPLE = "per_sample"
SELECTION_TEXT = {BATCH_VOTE: "batch vote at test time", PER_SAMPLE: "per-sample prompt selection"}

_BATCH_VOTE_PROTOCOL = ("prompt selection by batch vote at test time (majority top-k prompt set over the test "
                        "batch; single-task test batches leak the task identity), "
                        "backbone ViT-B/16 IN-21k (no IN-1k fine-tuning)")
_CITED_PROTOCOL = "as reported there, details unknown: as cited by ConvPrompt (not re-checked)"
_CONVPROMPT_PROTOCOL = ("per-sample prompt selection (no task identity at test), "
                        "backbone ViT-B/16 IN-21k (no IN-1k fine-tuning)")


#: What each definition of the reported numbers means (see avalanche_convprompt.evaluation.summary).
DEFINITION_TEXT = {
    "task_mean": "mean over experiences of the final accuracies",
    "sample_weighted": "accuracy over all seen test samples (sample-weighted)",
    "max_over_row": "per earlier experience, max over all rows minus the last value (never negative)",
    "coda_stepwise": "mean over steps of the mean one-step drop (CODA-Prompt's calc_forgetting)",
}
#: The definitions of the ported references' code, by method (JH-LEE-KR ports, CVIR/ConvPrompt, GT-RIPL/CODA-Prompt).
_PORT_DEFINITIONS = {"l2p": ("task_mean", "max_over_row"), "dualprompt": ("task_mean", "max_over_row"),
                     "convprompt": ("sample_weighted", "max_over_row"), "coda": ("sample_weighted", "coda_stepwise")}


@dataclass(frozen=True)
class Published:
    """One published number: final average accuracy and average forgetting (percent), where it comes from
    (``source``, a key of :data:`SOURCES`), how it was measured (``protocol``, free text), the test-time
    prompt selection it used (``selection``: ``"batch_vote"``, ``"per_sample"``, or None when unknown), and how
    its accuracy and forgetting are defined (``definitions``: keys of :data:`DEFINITION_TEXT`, or None when
    not known, in which case no measured number is put beside it as comparable)."""
    accuracy: float
    forgetting: Optional[float]
    source: str
    protocol: str
    selection: Optional[str] = None
    definitions: Optional[Tuple[str, str]] = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown published source {self.source!r}; known: {sorted(SOURCES)}")
        if self.selection not in (None, BATCH_VOTE, PER_SAMPLE):
            raise ValueError(f"selection must be {BATCH_VOTE!r}, {PER_SAMPLE!r} or None, got {self.selection!r}")
        if self.definitions is not None and any(d not in DEFINITION_TEXT for d in self.definitions):
            raise ValueError(f"unknown definitions {self.definitions}; known: {sorted(DEFINITION_TEXT)}")

    @property
    def citation(self) -> str:
        return SOURCES[self.source]


# benchmark -> method -> the published number, its source, protocol and definitions. The original papers' own
# numbers are defined as the code behind them computes them (the L2P and DualPrompt ports compute them as their
# JAX originals report them); CODA-Prompt's numbers, cited by ConvPrompt, are CODA-Prompt's own, computed by its
# code; for L2P on ImageNet-R (a re-citation) the definitions are not known here.
PUBLISHED: Dict[str, Dict[str, Published]] = {
    "split_cifar100": {
        "l2p": Published(83.83, 7.63, "wang2022_l2p", _BATCH_VOTE_PROTOCOL, BATCH_VOTE, _PORT_DEFINITIONS["l2p"]),
        "dualprompt": Published(86.51, 5.16, "wang2022_dualprompt", _BATCH_VOTE_PROTOCOL, BATCH_VOTE,
                                _PORT_DEFINITIONS["dualprompt"]),
        "coda": Published(86.25, 1.67, "roy2024_cited", _CITED_PROTOCOL, None, _PORT_DEFINITIONS["coda"]),
        "convprompt": Published(88.87, 4.75, "roy2024_convprompt", _CONVPROMPT_PROTOCOL, PER_SAMPLE,
                                _PORT_DEFINITIONS["convprompt"]),
    },
    "split_imagenet_r": {
        "l2p": Published(61.57, 9.73, "roy2024_cited", _CITED_PROTOCOL),
        "dualprompt": Published(68.13, 4.68, "wang2022_dualprompt",
                                "per-sample prompt selection at test time, "
                                "backbone ViT-B/16 IN-21k (no IN-1k fine-tuning)", PER_SAMPLE,
                                _PORT_DEFINITIONS["dualprompt"]),
        "coda": Published(75.45, 1.64, "roy2024_cited", _CITED_PROTOCOL, None, _PORT_DEFINITIONS["coda"]),
        "convprompt": Published(77.86, 4.33, "roy2024_convprompt", _CONVPROMPT_PROTOCOL, PER_SAMPLE,
                                _PORT_DEFINITIONS["convprompt"]),
    },
    "split_cub200": {
        "convprompt": Published(80.2, 5.6, "roy2024_convprompt", _CONVPROMPT_PROTOCOL, PER_SAMPLE,
                                _PORT_DEFINITIONS["convprompt"]),
    },
}


def _selects_prompts(method: str) -> bool:
    """Records of such methods carry ``config.recipe.selection``; one from before that field was per-sample."""
    registered = METHODS.get(method)
    return registered is not None and "selection" in registered.accepts

REQUIRED_FIELDS = ("method", "benchmark", "seed", "accuracy_matrix", "average_accuracy",
                   "average_forgetting", "learnable_parameters", "train_seconds", "train_images_per_second")
_NUMERIC_FIELDS = ("average_accuracy", "learnable_parameters", "train_seconds", "train_images_per_second")

CSV_COLUMNS = ("method", "label", "benchmark", "seeds", "class_order", "n",
               "accuracy_mean", "accuracy_std", "forgetting_mean", "forgetting_std",
               "reference_accuracy_definition", "reference_forgetting_definition",
               "reference_accuracy_mean", "reference_accuracy_std",
               "reference_forgetting_mean", "reference_forgetting_std",
               "learnable_parameters", "learnable_parameters_vary",
               "train_seconds_mean", "train_seconds_std",
               "train_images_per_second_mean", "train_images_per_second_std",
               "measured_protocol", "measured_selection",
               "published_accuracy", "published_forgetting", "published_source", "published_citation",
               "published_protocol", "published_selection", "published_accuracy_definition",
               "published_forgetting_definition")

DASH = "–"


# ----------------------------------------------------------------------------- checking

def _describe(run, index: int) -> str:
    """Name a run in error messages by what it has, so a bad file can be found."""
    if not isinstance(run, dict):
        return f"run #{index}"
    return f"run #{index} (method={run.get('method')!r}, seed={run.get('seed')!r})"


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_run(run, index: int) -> None:
    """Fail with the field and the run named, rather than deep inside numpy or matplotlib."""
    where = _describe(run, index)
    if not isinstance(run, dict):
        raise ValueError(f"{where}: expected a dict, got {type(run).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in run:
            raise ValueError(f"{where}: missing required field {name!r}")
    for name in _NUMERIC_FIELDS:
        if not _is_number(run[name]):
            raise ValueError(f"{where}: field {name!r} must be a number, got {run[name]!r}")
    if not isinstance(run["seed"], numbers.Integral) or isinstance(run["seed"], bool):
        raise ValueError(f"{where}: field 'seed' must be an integer, got {run['seed']!r}")
    forgetting = run["average_forgetting"]
    if forgetting is not None and not _is_number(forgetting):
        raise ValueError(f"{where}: field 'average_forgetting' must be a number or null, got {forgetting!r}")
    try:
        m = np.asarray(run["accuracy_matrix"], dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field 'accuracy_matrix' is not a rectangular matrix of numbers: {err}") from err
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"{where}: field 'accuracy_matrix' must be a non-empty 2-D matrix, got shape {m.shape}")
    if not (m.shape[0] == m.shape[1] or m.shape[0] == 1):
        raise ValueError(f"{where}: field 'accuracy_matrix' must be T x T (continual) or 1 x T (joint), "
                         f"got {m.shape[0]} x {m.shape[1]}")


def _group(runs: Sequence[dict]) -> Dict[str, List[dict]]:
    """Check the runs and group them by method, in first-appearance order."""
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to report")
    for i, run in enumerate(runs):
        _check_run(run, i)
    benchmarks = sorted({str(r["benchmark"]) for r in runs})
    if len(benchmarks) > 1:
        raise ValueError(f"runs mix benchmarks {benchmarks}: report one benchmark at a time")
    groups: Dict[str, List[dict]] = {}
    for i, run in enumerate(runs):
        group = groups.setdefault(run["method"], [])
        if any(r["seed"] == run["seed"] for r in group):
            raise ValueError(f"{_describe(run, i)}: seed {run['seed']!r} of {run['method']!r} appears twice; "
                             "a duplicate would weigh that seed double")
        if group and _run_precision(run) != _run_precision(group[0]):
            raise ValueError(f"{_describe(run, i)}: runs of {run['method']!r} mix precisions "
                             f"{_run_precision(group[0])!r} and {_run_precision(run)!r}; report them from separate "
                             "folders")
        if group and _run_replay(run) != _run_replay(group[0]):
            raise ValueError(f"{_describe(run, i)}: runs of {run['method']!r} mix replay buffers of "
                             f"{_run_replay(group[0])} and {_run_replay(run)} samples (0: no replay); "
                             "report them from separate folders")
        if group and _run_class_order(run) != _run_class_order(group[0]):
            raise ValueError(f"{_describe(run, i)}: runs of {run['method']!r} mix class orders "
                             f"{_run_class_order(group[0])!r} and {_run_class_order(run)!r}; report them from "
                             "separate folders")
        if group:
            _check_same_settings(group[0], run, i)
        if group and _run_task_incremental(run) != _run_task_incremental(group[0]):
            raise ValueError(f"{_describe(run, i)}: runs of {run['method']!r} mix class-incremental and "
                             "task-incremental evaluation; report them from separate folders")
        group.append(run)
    return groups


def _check_same_settings(first: dict, run: dict, index: int) -> None:
    """Seeds of one row must differ in their seed only: ``config.settings`` (what the command set, recorded by
    ``benchmarks.run``) equal, and none resumed under changed settings (``config.changed_settings``)."""
    from avalanche_convprompt.runs.checkpoint import describe_differences, settings_differences

    a, b = _config(first).get("settings"), _config(run).get("settings")
    if a is not None and b is not None:
        differences = settings_differences(a, b)
        if differences:
            raise ValueError(f"{_describe(run, index)}: runs of {run['method']!r} were trained under different "
                             f"settings ({describe_differences(differences)}, seed {first['seed']} -> seed "
                             f"{run['seed']}); averaging them would report one row for two experiments: report them "
                             "from separate folders")
    changed = [r for r in (first, run) if _config(r).get("changed_settings")]
    if changed:
        raise ValueError(f"{_describe(run, index)}: seed {changed[0]['seed']} of {run['method']!r} was resumed under "
                         "changed settings (config.changed_settings): its numbers belong to no single setting and "
                         "are not averaged with other seeds; report it from a folder of its own")


def _run_replay(run: dict) -> int:
    """``config.replay.mem_size``: the replay buffer in samples (0: none, as in records from before the field)."""
    replay = _config(run).get("replay")
    return int(replay.get("mem_size", 0)) if isinstance(replay, dict) else 0


def _run_class_order(run: dict) -> str:
    """``config.class_order``: ``natural`` or ``permuted`` (records from before the field: permuted, the only
    order the runner drew then)."""
    return str(_config(run).get("class_order") or "permuted")


def _run_task_incremental(run: dict) -> bool:
    """``config.task_incremental``: each test sample scored by its own task's head (False in older records)."""
    return bool(_config(run).get("task_incremental", False))


def _label(group: Sequence[dict]) -> str:
    """The method's label, with replay, task-incremental evaluation and a precision other than fp32 when its
    runs used them ("ConvPrompt + replay 200", "ConvPrompt (task-incremental)", "ConvPrompt (bf16)")."""
    label = str(group[0].get("label") or group[0]["method"])
    replay = _run_replay(group[0])
    label = f"{label} + replay {replay}" if replay else label
    label = f"{label} (task-incremental)" if _run_task_incremental(group[0]) else label
    precision = _run_precision(group[0])
    return label if precision == "32" else f"{label} ({'fp16' if precision == '16' else precision})"


def _run_precision(run: dict) -> str:
    """``config.precision`` (``"32"`` in records from before the field)."""
    return str(_config(run).get("precision", "32"))


def _is_joint(run: dict) -> bool:
    """Joint training has one row (evaluated once, after everything): no curve, no forgetting."""
    m = np.asarray(run["accuracy_matrix"], dtype=float)
    registered = METHODS.get(run["method"])
    return (registered is not None and not registered.continual) or (m.shape[0] == 1 and m.shape[1] > 1)


def _plain(v):
    """A Python int or float (numpy scalars would print as 'np.float64(...)' in the CSV)."""
    return int(v) if isinstance(v, numbers.Integral) or float(v).is_integer() else float(v)


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); the std of a single seed is 0.0."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


# ----------------------------------------------------------------------------- tables

def _config(run: dict) -> dict:
    config = run.get("config")
    return config if isinstance(config, dict) else {}


def _run_protocol(run: dict) -> Optional[str]:
    """``config.protocol`` ("offline", "shared", "reference"; older records: "paper"); None when not recorded."""
    protocol = _config(run).get("protocol")
    return None if protocol is None else str(protocol)


def _run_selection(run: dict) -> Optional[str]:
    """``config.recipe.selection`` of L2P/DualPrompt; a record from before that field was per-sample."""
    recipe = _config(run).get("recipe")
    selection = recipe.get("selection") if isinstance(recipe, dict) else None
    if selection is None:
        return PER_SAMPLE if _selects_prompts(run["method"]) else None
    return str(selection)


def _one_or_mixed(values: Sequence[Optional[str]]) -> Optional[str]:
    """The seeds' common value; 'mixed: a, b' when they differ ('unknown' for a seed without one)."""
    distinct = sorted({"unknown" if v is None else v for v in values})
    if distinct == ["unknown"]:
        return None
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(distinct)


def _values(measured: Optional[str]) -> set:
    """The values behind a measured_protocol / measured_selection cell."""
    if measured is None:
        return set()
    return set(measured[len("mixed: "):].split(", ")) if measured.startswith("mixed: ") else {measured}



def _reference_definitions(method: str, benchmark: str, published: Optional[Published]) -> Optional[Tuple[str, str]]:
    """How ``method``'s reference reports accuracy and forgetting: the published number's definitions when it has
    them, else the method's registered reference recipe's (any benchmark: a method's code reports one way)."""
    if published is not None and published.definitions is not None:
        return published.definitions
    registered = METHODS.get(method)
    recipes = registered.reference if registered is not None else {}
    recipe = recipes.get(benchmark) or next(iter(recipes.values()), None)
    return None if recipe is None else (recipe.accuracy, recipe.forgetting)


def _run_metric(run: dict, kind: str, definition: str) -> Optional[float]:
    """A run's final accuracy (``kind="accuracy"``) or forgetting under ``definition``: from its record's
    ``metrics``, else computed from its accuracy matrix (``None`` when that cannot be done: a sample-weighted
    accuracy needs ``test_samples_per_experience``; joint training has no forgetting)."""
    stored = run.get("metrics")
    if isinstance(stored, dict) and isinstance(stored.get(kind), dict) and definition in stored[kind]:
        value = stored[kind][definition]
        return None if value is None else float(value)
    if _is_joint(run):
        return None if kind == "forgetting" else _joint_accuracy(run, definition)
    matrix, sizes = run["accuracy_matrix"], run.get("test_samples_per_experience")
    try:
        return reported_metrics(matrix, sizes)[kind][definition]
    except ValueError:                      # sizes that do not match the matrix
        return None


def _joint_accuracy(run: dict, definition: str) -> Optional[float]:
    row = np.asarray(run["accuracy_matrix"][-1], dtype=float)
    if definition == "task_mean":
        return float(row.mean())
    sizes = run.get("test_samples_per_experience")
    return None if not sizes or len(sizes) != len(row) else float((row * np.asarray(sizes)).sum() / sum(sizes))


def _mean_std_or_none(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and std over the seeds, or ``(None, None)`` when any seed lacks the value."""
    if not values or any(v is None for v in values):
        return None, None
    return _mean_std(values)


def aggregate(runs: Sequence[dict]) -> List[dict]:
    """One row per method (first-appearance order): mean and sample std over seeds, and the published numbers.

    ``measured_protocol`` / ``measured_selection``: the runs' ``config.protocol`` and test-time prompt
    selection (None when not recorded; 'mixed: ...' when the seeds differ). ``published_*``: the number
    from :data:`PUBLISHED`, its source key and citation, its protocol and its selection (all None if none).

    Raises ``ValueError`` for an empty list, mixed benchmarks, a missing or malformed field,
    a duplicated (method, seed), or forgetting null for some seeds of a method only.
    """
    groups = _group(runs)
    benchmark = str(next(iter(groups.values()))[0]["benchmark"])
    rows = []
    for method, group in groups.items():
        acc_mean, acc_std = _mean_std([r["average_accuracy"] for r in group])
        forgetting = [r["average_forgetting"] for r in group]
        if all(f is None for f in forgetting):
            forg_mean = forg_std = None
        elif any(f is None for f in forgetting):
            missing = sorted(r["seed"] for r in group if r["average_forgetting"] is None)
            raise ValueError(f"method {method!r}: average_forgetting is null for seeds {missing} only; "
                             "a mean over the others would silently drop them")
        else:
            forg_mean, forg_std = _mean_std(forgetting)
        params = [r["learnable_parameters"] for r in group]
        vary = len(set(params)) > 1
        sec_mean, sec_std = _mean_std([r["train_seconds"] for r in group])
        ips_mean, ips_std = _mean_std([r["train_images_per_second"] for r in group])
        # published numbers are rehearsal-free: none beside a replay row
        published = None if _run_replay(group[0]) or _run_task_incremental(group[0]) \
            else PUBLISHED.get(benchmark, {}).get(method)
        definitions = _reference_definitions(method, benchmark, published)
        ref_acc = ref_forg = (None, None)
        if definitions is not None:
            ref_acc = _mean_std_or_none([_run_metric(r, "accuracy", definitions[0]) for r in group])
            ref_forg = _mean_std_or_none([_run_metric(r, "forgetting", definitions[1]) for r in group])
        rows.append({
            "method": method,
            "label": _label(group),
            "benchmark": benchmark,
            "seeds": sorted(int(r["seed"]) for r in group),
            "class_order": _run_class_order(group[0]),
            "n": len(group),
            "accuracy_mean": acc_mean, "accuracy_std": acc_std,
            "forgetting_mean": forg_mean, "forgetting_std": forg_std,
            "reference_accuracy_definition": definitions[0] if definitions else None,
            "reference_forgetting_definition": definitions[1] if definitions else None,
            "reference_accuracy_mean": ref_acc[0], "reference_accuracy_std": ref_acc[1],
            "reference_forgetting_mean": ref_forg[0], "reference_forgetting_std": ref_forg[1],
            "learnable_parameters": float(np.mean(params)) if vary else _plain(params[0]),
            "learnable_parameters_vary": vary,
            "train_seconds_mean": sec_mean, "train_seconds_std": sec_std,
            "train_images_per_second_mean": ips_mean, "train_images_per_second_std": ips_std,
            "measured_protocol": _one_or_mixed([_run_protocol(r) for r in group]),
            "measured_selection": _one_or_mixed([_run_selection(r) for r in group]),
            "published_accuracy": published.accuracy if published else None,
            "published_forgetting": published.forgetting if published else None,
            "published_source": published.source if published else None,
            "published_citation": published.citation if published else None,
            "published_protocol": published.protocol if published else None,
            "published_selection": published.selection if published else None,
            "published_accuracy_definition": published.definitions[0] if published and published.definitions
            else None,
            "published_forgetting_definition": published.definitions[1] if published and published.definitions
            else None,
        })
    return rows


def _pm(mean: Optional[float], std: Optional[float], n: int, digits: int) -> str:
    """'mean ± std'; one seed has no spread to show, so just the value."""
    if mean is None:
        return DASH
    if n < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _published_text(acc: Optional[float], forg: Optional[float], marker: Optional[str] = None) -> str:
    """As the paper prints them ('80.2 / 5.6', not '80.20 / 5.60'), then the footnote marker ('[a]')."""
    if acc is None:
        return DASH
    text = f"{acc:g} / {DASH if forg is None else format(forg, 'g')}"
    return f"{text} [{marker}]" if marker else text


def _marker(i: int) -> str:
    """a, b, ..., z, aa, ab, ..."""
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("a") + r) + letters
    return letters


def _published_footnotes(rows: Sequence[dict]) -> Tuple[Dict[str, str], List[str]]:
    """Method -> footnote marker, and the footnote lines; rows with the same source and protocol share one."""
    markers: Dict[Tuple[str, str, str], str] = {}
    by_method: Dict[str, str] = {}
    lines = []
    for row in rows:
        if row.get("published_accuracy") is None:
            continue
        source = row.get("published_source")
        citation = row.get("published_citation") or SOURCES.get(source, "source not recorded")
        protocol = row.get("published_protocol") or "protocol not recorded"
        acc_def, forg_def = row.get("published_accuracy_definition"), row.get("published_forgetting_definition")
        defined = (f"Definitions: {DEFINITION_TEXT[acc_def]} / {DEFINITION_TEXT[forg_def]}" if acc_def
                   else "Definitions of accuracy and forgetting not known here: no measured number is compared "
                        "with it")
        key = (str(source), protocol, defined)
        if key not in markers:
            markers[key] = _marker(len(markers))
            lines.append(f"- [{markers[key]}] {citation}. Protocol: {protocol}. {defined}.")
        by_method[row["method"]] = markers[key]
    return by_method, lines


def _protocol_notes(rows: Sequence[dict], markers: Dict[str, str]) -> List[str]:
    """One line per row whose measured test-time prompt selection differs from the published number's."""
    notes = []
    for row in rows:
        published = row.get("published_selection")
        measured = row.get("measured_selection")
        if row.get("published_accuracy") is None or published is None or measured is None or measured == published:
            continue
        shown = ", ".join(SELECTION_TEXT.get(v, v) for v in sorted(_values(measured)))
        mixed = " (the seeds differ)" if len(_values(measured)) > 1 else ""
        marker = markers[row["method"]]
        notes.append(f"- {row['label']}: measured with {shown}{mixed}, published [{marker}] with "
                     f"{SELECTION_TEXT.get(published, published)}: the measured and published protocols differ, "
                     "so do not compare the two numbers directly.")
    return notes


#: Short tags of the definitions, shown in the table and explained in its caption.
_DEFINITION_TAG = {"task_mean": "tm", "sample_weighted": "sw", "max_over_row": "rm", "coda_stepwise": "cs"}
_DEFINITION_LEGEND = "; ".join(f"{tag}: {DEFINITION_TEXT[d]}" for d, tag in _DEFINITION_TAG.items())


def _reference_text(row: dict) -> str:
    """'72.00 / 12.00 (sw, rm)': accuracy / forgetting under the reference's definitions, tagged."""
    acc_def, forg_def = row.get("reference_accuracy_definition"), row.get("reference_forgetting_definition")
    if acc_def is None:
        return DASH
    n = row["n"]
    acc = _pm(row["reference_accuracy_mean"], row["reference_accuracy_std"], n, 2)
    forg = _pm(row["reference_forgetting_mean"], row["reference_forgetting_std"], n, 2)
    acc = "n/a" if row["reference_accuracy_mean"] is None and acc_def == "sample_weighted" else acc
    return f"{acc} / {forg} ({_DEFINITION_TAG[acc_def]}, {_DEFINITION_TAG[forg_def]})"


def _params_text(row: dict) -> str:
    if row["learnable_parameters_vary"]:
        return f"{row['learnable_parameters']:,.0f} (mean; varies by seed)"
    return f"{row['learnable_parameters']:,}"


def markdown_table(rows: Sequence[dict], benchmark: str) -> str:
    """The comparison table as Markdown, with a caption that states what the numbers mean.

    Each published number carries a footnote marker ('83.83 / 7.63 [a]'); under the caption, one footnote per
    (source, protocol) names the citation and the protocol, then a note for every row whose measured
    test-time prompt selection differs from the published one.
    """
    for row in rows:
        if row.get("benchmark", benchmark) != benchmark:
            raise ValueError(f"row {row['method']!r} is for {row['benchmark']!r}, not {benchmark!r}")
    header = ("| method | seeds | final avg. accuracy (%) | avg. forgetting (%) | learnable params "
              "| train time (s) | train images/s | as its reference reports: acc. / forg. | published acc. / forg. |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    markers, footnotes = _published_footnotes(rows)
    for row in rows:
        n = row["n"]
        cells = [
            str(row["label"]).replace("|", "\\|"),
            ", ".join(str(s) for s in row["seeds"]) + f" ({row['class_order']})",
            _pm(row["accuracy_mean"], row["accuracy_std"], n, 2),
            _pm(row["forgetting_mean"], row["forgetting_std"], n, 2),
            _params_text(row),
            _pm(row["train_seconds_mean"], row["train_seconds_std"], n, 1),
            _pm(row["train_images_per_second_mean"], row["train_images_per_second_std"], n, 1),
            _reference_text(row),
            _published_text(row["published_accuracy"], row["published_forgetting"], markers.get(row["method"])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if footnotes:
        published = (f"Published (last column): each number from the source and under the protocol its footnote "
                     f"names, on the full benchmark ({PUBLISHED_COMMON}); they do not all come from one paper.")
        offline = [str(r["label"]) for r in rows
                   if r.get("published_accuracy") is not None and "offline" in _values(r.get("measured_protocol"))]
        if offline:
            published += (f" Measured here with the offline protocol (shipped small backbone): {', '.join(offline)}; "
                          "not comparable with the published numbers.")
    elif benchmark == "synthetic":
        published = (f"No published numbers for {benchmark!r}: the offline synthetic stream; published numbers "
                     "(on the full benchmarks) are not comparable with it.")
    else:
        published = f"No published numbers for {benchmark!r}."
    caption = (f"\n*{benchmark}: mean ± sample std (ddof=1) over seeds (one seed: the value); the seeds column "
               "also names the class order (natural: classes 0..N-1 in turn, as the references run; permuted: a "
               "seeded permutation per seed). "
               "Final avg. accuracy: mean over experiences of `A[T-1,i]`; forgetting (this project's, after Chaudhry "
               "et al. 2018): mean over `i < T-1` of `max_{i<=t<T-1} A[t,i] - A[T-1,i]`; "
               f"{DASH} for joint training. 'As its reference reports': the same runs under the definitions of the "
               f"method's reference code ({_DEFINITION_LEGEND}); the published number, where there is one, uses "
               f"the same definitions unless its footnote says otherwise. {published}*")
    text = "\n".join(lines) + "\n" + caption + "\n"
    if footnotes:
        text += "\n" + "\n".join(footnotes) + "\n"
    notes = _protocol_notes(rows, markers)
    if notes:
        text += "\nProtocol differences between the measured runs and the published numbers:\n\n" \
                + "\n".join(notes) + "\n"
    return text


def _csv_value(v) -> str:
    """Plain numbers (repr round-trips floats exactly); empty for missing."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))
    return str(v)


#: Decimals of the measured columns, as the Markdown table shows them.
CSV_DIGITS = {"accuracy": 2, "forgetting": 2, "reference_accuracy": 2, "reference_forgetting": 2,
              "train_seconds": 1, "train_images_per_second": 1}


def csv_table(rows: Sequence[dict]) -> str:
    """The same rows for spreadsheets and scripts: one column per number, seeds space-separated.

    Measured means and stds are rounded as the Markdown table rounds them; one seed has no
    spread, so its ``*_std`` cells are empty (as the table shows the value alone).
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = dict(row)
        for name, digits in CSV_DIGITS.items():
            for stat in ("mean", "std"):
                v = values.get(f"{name}_{stat}")
                values[f"{name}_{stat}"] = None if v is None or (stat == "std" and row["n"] < 2) else round(v, digits)
        out = {k: _csv_value(values.get(k)) for k in CSV_COLUMNS}
        out["seeds"] = " ".join(str(s) for s in row["seeds"])
        writer.writerow(out)
    return buf.getvalue()


def mean_matrix(runs: Sequence[dict]) -> np.ndarray:
    """Mean accuracy matrix over the seeds of one method (all matrices must have the same shape)."""
    runs = list(runs)
    if not runs:
        raise ValueError("mean_matrix needs at least one run")
    methods = sorted({str(r.get("method")) for r in runs})
    if len(methods) > 1:
        raise ValueError(f"mean_matrix averages the seeds of one method, got methods {methods}")
    mats = []
    for i, run in enumerate(runs):
        try:
            mats.append(np.asarray(run["accuracy_matrix"], dtype=float))
        except KeyError:
            raise ValueError(f"{_describe(run, i)}: missing required field 'accuracy_matrix'") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"{_describe(run, i)}: 'accuracy_matrix' is not a rectangular matrix: {err}") from err
    shapes = [m.shape for m in mats]
    if len(set(shapes)) > 1:
        detail = ", ".join(f"seed {r.get('seed')!r}: {s[0]}x{s[1]}" if len(s) == 2 else f"seed {r.get('seed')!r}: {s}"
                           for r, s in zip(runs, shapes))
        raise ValueError(f"accuracy matrices of {methods[0]!r} differ in shape ({detail}); "
                         "were the seeds run with different numbers of experiences?")
    return np.mean(mats, axis=0)


# ----------------------------------------------------------------------------- plots

def plot_accuracy_curves(runs: Sequence[dict], path: str) -> str:
    """Accuracy on seen classes after each experience: mean over seeds, ± std band; joint as a line."""
    groups = _group(runs)
    benchmark = next(iter(groups.values()))[0]["benchmark"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    longest = 1
    for method, group in groups.items():
        label = _label(group)
        if _is_joint(group[0]):
            mean, std = _mean_std([r["average_accuracy"] for r in group])
            line = ax.axhline(mean, linestyle="--", color="black" if method == "joint" else None,
                              label="joint (upper bound)" if method == "joint" else f"{label} (upper bound)")
            if std > 0:
                ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.12, linewidth=0)
            continue
        mean_matrix(group)                                 # same shapes, or a clear error
        curves = np.array([seen_class_accuracy_curve(r["accuracy_matrix"]) for r in group])
        mean = curves.mean(axis=0)
        std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        x = np.arange(1, len(mean) + 1)
        longest = max(longest, len(mean))
        (line,) = ax.plot(x, mean, marker="o", markersize=3.5, label=label)
        if len(curves) > 1:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xlabel("experiences trained")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0.8, longest + 0.2)
    ax.set_xticks(range(1, longest + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    n_seeds = sorted({len(g) for g in groups.values()})
    ax.set_title(f"{benchmark}: mean over seeds (n = {', '.join(map(str, n_seeds))}), band ± 1 std", fontsize=10)
    return _save(fig, path)


def plot_accuracy_matrices(runs: Sequence[dict], path: str) -> str:
    """One heat map per method (mean over seeds); cells not yet trained are blank."""
    groups = _group(runs)
    rows = {r["method"]: r for r in aggregate(runs)}
    n = len(groups)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.9 * nrows), squeeze=False)
    im = None
    for ax, (method, group) in zip(axes.ravel(), groups.items()):
        m = mean_matrix(group)
        if m.shape[0] == m.shape[1]:
            mask = np.triu(np.ones_like(m, dtype=bool), k=1)
        else:
            mask = np.zeros_like(m, dtype=bool)            # joint: one row, all of it trained
        im = ax.imshow(np.ma.masked_array(m, mask), vmin=0, vmax=100, cmap="viridis")
        size = 7 if m.shape[1] <= 10 else 5
        for (t, i), v in np.ndenumerate(m):
            if not mask[t, i]:
                ax.text(i, t, f"{v:.0f}", ha="center", va="center", fontsize=size,
                        color="white" if v < 60 else "black")
        row = rows[method]
        forg = DASH if row["forgetting_mean"] is None else f"{row['forgetting_mean']:.1f}"
        ax.set_title(f"{row['label']}: acc {row['accuracy_mean']:.1f}, forg {forg}", fontsize=9)
        ax.set_xlabel("tested on experience")
        ax.set_ylabel("after training experience" if m.shape[0] > 1 else "after all")
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy (%)")
    return _save(fig, path)


# ----------------------------------------------------------------------------- files

def _method_rank(method: str) -> Tuple[int, str]:
    """Table order: the registry's (lower bound, prompt methods in publication order, upper bound, then
    methods registered later); methods no longer registered last, by name."""
    order = list(METHODS)
    return (order.index(method) if method in order else len(order), method)


def load_runs(folder: str) -> List[dict]:
    """Every ``folder/runs/*.json``, in table order (see :func:`_method_rank`) and by seed."""
    run_dir = os.path.join(folder, "runs")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no runs folder {run_dir!r}: expected the runner's RESULTS_DIR")
    paths = sorted(glob.glob(os.path.join(run_dir, "*.json")))
    if not paths:
        raise FileNotFoundError(f"no run records (*.json) in {run_dir!r}")
    runs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                run = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a valid JSON run record ({err})") from err
        except OSError as err:
            raise OSError(f"{path}: cannot be read ({err.strerror or err})") from err
        if not isinstance(run, dict) or "method" not in run or "seed" not in run:
            raise ValueError(f"{path}: not a run record (expected an object with 'method' and 'seed')")
        runs.append(run)
    runs.sort(key=lambda r: (_method_rank(str(r["method"])),
                             r["seed"] if _is_number(r["seed"]) else math.inf, str(r["seed"])))
    return runs


def _write_text(path: str, text: str) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return path


def write_report(runs: Sequence[dict], out_dir: str) -> Dict[str, str]:
    """Write results.md, results.csv and the two plots into ``out_dir``; return their paths.

    Keys: ``markdown``, ``csv``, ``accuracy_curves``, ``accuracy_matrices``.
    """
    rows = aggregate(runs)                                 # validates before anything is written
    benchmark = rows[0]["benchmark"]
    ensure_writable_dir(out_dir)
    paths = {
        "markdown": os.path.join(out_dir, "results.md"),
        "csv": os.path.join(out_dir, "results.csv"),
        "accuracy_curves": os.path.join(out_dir, "accuracy_curves.png"),
        "accuracy_matrices": os.path.join(out_dir, "accuracy_matrices.png"),
    }
    plot_accuracy_curves(runs, paths["accuracy_curves"])
    plot_accuracy_matrices(runs, paths["accuracy_matrices"])
    _write_text(paths["csv"], csv_table(rows))
    markdown = "\n".join([
        f"# Results: {benchmark}",
        "",
        markdown_table(rows, benchmark),
        "![accuracy on seen classes after each experience](accuracy_curves.png)",
        "",
        "![accuracy matrices, mean over seeds](accuracy_matrices.png)",
        "",
    ])
    _write_text(paths["markdown"], markdown)
    return paths


def main(argv=None) -> Dict[str, str]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Re-render results.md, results.csv and the plots from RESULTS_DIR/runs/*.json.")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="folder holding runs/*.json")
    parser.add_argument("--out", default=None, help="write the report here (default: RESULTS_DIR)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.results_dir)
        paths = write_report(runs, args.out or args.results_dir)
    except (ValueError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
    with open(paths["markdown"], encoding="utf-8") as f:
        print(f.read())
    for path in paths.values():
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
