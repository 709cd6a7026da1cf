"""How many prompt generators each experience gets: a plugin and its policies.

:class:`PromptExpansionPlugin` asks its policy at the start of every training
experience and grows the strategy's prompt pool accordingly. It acts in
``before_train_dataset_adaptation``: that is the last callback before Avalanche
adapts the model and builds the optimizer, so the new generators are in the
optimizer of the same experience. A policy sees only class ids (new and
earlier), so a policy that reads class descriptions (the language-model policy)
plugs in without touching the strategy.

Each decision is kept in :attr:`PromptExpansionPlugin.history` and published to
the evaluator as metrics ``PromptPool/Generators_Added/ExpNNN`` and
``PromptPool/Generators_Total`` (plus any numbers the policy reports, such as a
similarity), so loggers and ``evaluator.get_all_metrics()`` see them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Protocol, Sequence

from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue

from ..data.experiences import experience_classes


@dataclass
class Allocation:
    """One policy decision: ``generators`` for an experience, with the numbers behind it."""

    experience: int
    generators: int
    classes: List[int] = field(default_factory=list)
    info: Dict[str, float] = field(default_factory=dict)


class AllocationPolicy(Protocol):
    """Decides the number of new generators for an experience."""

    def allocate(self, experience: int, new_classes: Sequence[int], previous_classes: Sequence[int]) -> Allocation:
        ...


class FixedAllocation:
    """The same number of generators for every experience (paper: 5)."""

    def __init__(self, generators_per_experience: int = 5):
        if generators_per_experience < 1:
            raise ValueError(f"generators_per_experience must be >= 1, got {generators_per_experience}")
        self.generators_per_experience = int(generators_per_experience)

    def allocate(self, experience: int, new_classes: Sequence[int], previous_classes: Sequence[int]) -> Allocation:
        return Allocation(experience, self.generators_per_experience, list(new_classes))


class PromptExpansionPlugin(SupervisedPlugin, supports_distributed=True):
    """Grows the prompt pool at the start of each training experience."""

    def __init__(self, policy: AllocationPolicy):
        super().__init__()
        self.policy = policy
        self.history: List[Allocation] = []

    @property
    def previous_classes(self) -> List[int]:
        """Classes of the decisions so far, each once, in order of first appearance."""
        return list(dict.fromkeys(c for a in self.history for c in a.classes))

    def state_dict(self) -> dict:
        """The allocation history as plain data (for checkpoints)."""
        return {"history": [{"experience": a.experience, "generators": int(a.generators),
                             "classes": [int(c) for c in a.classes], "info": dict(a.info)} for a in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [Allocation(h["experience"], h["generators"], list(h["classes"]), dict(h["info"]))
                        for h in state["history"]]

    def before_train_dataset_adaptation(self, strategy, *args, **kwargs):
        """Ask the policy at the start of a new prompt task; a continued task (an online mini-experience of
        the same task, an experience trained again) keeps training its generators and asks nothing."""
        plan = getattr(strategy, "experience_plan", None)
        if plan is not None and plan.experience is strategy.experience and not plan.new_task:
            return
        experience = strategy.experience.current_experience
        classes = experience_classes(strategy.experience)
        # what came before is read from the model (its heads), so a reloaded model continues correctly
        heads = strategy.net.heads
        previous = heads.seen_classes
        repeated = sorted(set(classes) & set(previous))
        task_incremental = getattr(strategy, "task_incremental", False)
        if repeated and task_incremental and getattr(self.policy, "looks_up_class_ids", False):
            raise ValueError(
                f"experience {experience}: class ids {repeated} also belong to earlier experiences; this policy looks "
                "descriptors up by class id, so it needs ids that name one class each (not ids restarting at 0 in "
                "every experience): use FixedAllocation, or give every class its own id")
        decision = self.policy.allocate(heads.num_tasks, classes, previous)
        # only an experience that brings no new class may begin a task without generators of its own
        least = 0 if previous and not task_incremental and len(repeated) == len(classes) else 1
        if int(decision.generators) < least:
            raise ValueError(f"allocation policy gave {decision.generators} generators for experience {experience}"
                             + (", which brings new classes" if previous else ""))
        decision.classes = classes
        pool = strategy.net.prompt_module
        if int(decision.generators):
            pool.add_generators(int(decision.generators))
        else:
            pool.freeze_generators()
        self.history.append(decision)
        self._publish(strategy, decision, experience, pool.num_generators)

    def _publish(self, strategy, decision: Allocation, experience: int, total: int) -> None:
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator is None:
            return
        x = strategy.clock.train_iterations
        values = {f"PromptPool/Generators_Added/Exp{experience:03d}": decision.generators,
                  "PromptPool/Generators_Total": total}
        values.update({f"PromptPool/{k}/Exp{experience:03d}": v for k, v in decision.info.items()})
        for name, value in values.items():
            evaluator.publish_metric_value(MetricValue(self, name, value, x))
