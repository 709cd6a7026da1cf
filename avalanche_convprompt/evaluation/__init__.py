"""The numbers researchers report, from Avalanche's ``EvaluationPlugin``, and plots of them.

* :mod:`.summary` - the evaluator this package recommends and :func:`summarize_run`;
* :mod:`.plots` - accuracy curves, matrices and allocation plots (matplotlib, imported on use).
"""
from .summary import (ACC_MATRIX_METRIC, HOW_TO_EVALUATE, RunSummary, average_accuracy, average_forgetting,
                      default_cl_evaluator, summarize_run)

__all__ = ["default_cl_evaluator", "summarize_run", "RunSummary", "average_accuracy", "average_forgetting",
           "ACC_MATRIX_METRIC", "HOW_TO_EVALUATE"]
