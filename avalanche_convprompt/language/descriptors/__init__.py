"""Per-class visual descriptors: the text ConvPrompt compares to decide how many prompt generators a
new task gets.

A descriptor set is a JSON file of this form (UTF-8)::

    {"dataset": "CIFAR-100",
     "key": "what the class keys are",
     "source": "who wrote the descriptors",
     "classes": {"apple": {"name": "apple",
                           "descriptors": ["round fruit ...", "smooth glossy skin", ...]},
                 ...}}

``dataset``, ``key`` and ``source`` are informative; ``classes`` is required.  Each class needs a
``descriptors`` list of non-empty strings with no duplicates (compared case- and
whitespace-insensitively); ``name`` is optional and defaults to the key.

Four sets ship with the package (``SHIPPED_SETS``), the first three keyed by the official class
lists in :mod:`avalanche_convprompt.language.descriptors.official_classes`:

* ``"cifar100"``: torchvision's ``CIFAR100(...).classes`` names (``"aquarium_fish"``);
* ``"imagenet_r"``: WordNet ids, the ImageNet-R folder names (``"n01443537"``);
* ``"cub200"``: CUB-200-2011 ``classes.txt`` entries (``"001.Black_footed_Albatross"``);
* ``"synthetic"``: the offline SynthShapes class names (``"polka-dot triangle"``).

>>> ds = load_descriptors("cifar100")
>>> ds.name("aquarium_fish"), len(ds)
('aquarium fish', 100)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Iterator, Mapping

__all__ = ["ClassDescriptors", "DescriptorSet", "SHIPPED_SETS", "load_descriptors", "shipped_path"]

SHIPPED_SETS: tuple[str, ...] = ("cifar100", "imagenet_r", "cub200", "synthetic")
"""Names accepted by :func:`load_descriptors` and :func:`shipped_path`."""


@dataclass(frozen=True)
class ClassDescriptors:
    """One class: its readable ``name`` and its visual ``descriptors``."""

    name: str
    descriptors: tuple[str, ...]


@dataclass(frozen=True)
class DescriptorSet:
    """Descriptors of every class of one dataset, keyed as in its file (see the module docstring)."""

    dataset: str
    classes: Mapping[str, ClassDescriptors]
    key: str = ""
    source: str = ""
    path: str | None = field(default=None, compare=False)

    def descriptors(self, key: str) -> list[str]:
        """The descriptors of class ``key`` (a new list); ``KeyError`` if the set has no such class."""
        return list(self._get(key).descriptors)

    def name(self, key: str) -> str:
        """The readable name of class ``key``."""
        return self._get(key).name

    def keys(self) -> list[str]:
        """The class keys, in file order."""
        return list(self.classes)

    def __contains__(self, key: object) -> bool:
        return key in self.classes

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.classes)

    def _get(self, key: str) -> ClassDescriptors:
        try:
            return self.classes[key]
        except KeyError:
            raise KeyError(f"descriptor set {self.dataset!r} has no class {key!r}") from None


def shipped_path(name: str):
    """The packaged JSON file of shipped set ``name`` (an ``importlib.resources`` Traversable)."""
    if name not in SHIPPED_SETS:
        raise ValueError(f"unknown shipped descriptor set {name!r}; shipped sets: {', '.join(SHIPPED_SETS)}")
    return resources.files(__name__).joinpath("data", f"{name}.json")


def load_descriptors(name_or_path: str | os.PathLike) -> DescriptorSet:
    """Load a shipped set by name (one of ``SHIPPED_SETS``) or a JSON file of the same schema by path.

    Raises ``FileNotFoundError`` (naming the path and the shipped sets) when neither matches, and
    ``ValueError`` naming the file and the class when the file does not follow the schema.
    """
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_SETS:
        source = shipped_path(name_or_path)
        label = f"shipped set {name_or_path!r}"
        text = source.read_text(encoding="utf-8")
        path = None
        default_dataset = name_or_path
    else:
        path = os.fspath(name_or_path)
        label = path
        default_dataset = os.path.splitext(os.path.basename(path))[0]
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no descriptor file at {path!r}; pass an existing JSON file or one of the shipped sets: "
                f"{', '.join(SHIPPED_SETS)}")
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise ValueError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start}, line {line}); save the "
                             "file as UTF-8") from None
    try:
        doc = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as e:
        raise ValueError(f"{label}: key {e.key!r} appears twice in one object (JSON would silently keep the "
                         "last one); merge or remove the duplicate") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{label}: not valid JSON ({e})") from None
    return _parse(doc, label, path, default_dataset)


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list) -> dict:
    """A JSON object as a dict, refusing a key given twice (``json`` keeps the last one without a word)."""
    doc = {}
    for key, value in pairs:
        if key in doc:
            raise _DuplicateKey(key)
        doc[key] = value
    return doc


def _parse(doc: object, label: str, path: str | None, default_dataset: str) -> DescriptorSet:
    if not isinstance(doc, dict):
        raise ValueError(f"{label}: the top level must be a JSON object, got {type(doc).__name__}")
    if "classes" not in doc:
        raise ValueError(f"{label}: missing the \"classes\" object")
    raw = doc["classes"]
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{label}: \"classes\" must be a non-empty object mapping class keys to entries")
    for meta in ("dataset", "key", "source"):
        if meta in doc and not isinstance(doc[meta], str):
            raise ValueError(f"{label}: \"{meta}\" must be a string")

    classes: dict[str, ClassDescriptors] = {}
    for key, entry in raw.items():
        where = f"{label}: class {key!r}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: entry must be an object with \"descriptors\" (and optionally \"name\")")
        name = entry.get("name", key)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: \"name\" must be a non-empty string")
        descs = entry.get("descriptors")
        if not isinstance(descs, list) or not descs:
            raise ValueError(f"{where}: has no descriptors (\"descriptors\" must be a non-empty list)")
        seen: dict[str, int] = {}
        for i, d in enumerate(descs):
            if not isinstance(d, str):
                raise ValueError(f"{where}: descriptor {i} is not a string ({d!r})")
            norm = " ".join(d.split()).lower()
            if not norm:
                raise ValueError(f"{where}: descriptor {i} is empty or whitespace")
            if norm in seen:
                raise ValueError(f"{where}: descriptor {i} {d!r} duplicates descriptor {seen[norm]}")
            seen[norm] = i
        classes[key] = ClassDescriptors(name=name.strip(), descriptors=tuple(" ".join(d.split()) for d in descs))

    return DescriptorSet(dataset=doc.get("dataset") or default_dataset, classes=MappingProxyType(classes), key=doc.get("key", ""),
                         source=doc.get("source", ""), path=path)
