"""Write a descriptor file (see :mod:`avalanche_convprompt.language.descriptors`) by asking a language model.

Any OpenAI-compatible chat-completions endpoint works: hosted services and local servers such as
vLLM (``http://localhost:8000/v1``) or Ollama (``http://localhost:11434/v1``).  For each class the
model is asked for 5-8 short visual attributes as a JSON list; the answer is parsed leniently
(:func:`parse_descriptors`), and unusable answers, timeouts, connection errors, HTTP 429 and 5xx are
retried with exponential back-off.  Each finished class is cached at once in its own small JSON file,
so an interrupted run resumes where it stopped; the output file is written (atomically) only once
every class has descriptors.

Command line::

    python -m avalanche_convprompt.language.descriptors.generate --classes-file classes.txt \\
        --output my_dataset.json --base-url http://localhost:11434/v1 --model llama3.1

The classes file has one class per line; blank lines and ``#`` comments are skipped, and a
``key<TAB>readable name`` line gives a key (e.g. a WordNet id) a readable name for the prompt.

The API key is read from the environment variable named by ``--api-key-env`` (``OPENAI_API_KEY`` by
default); local servers need none, and no ``Authorization`` header is sent when it is unset.  The
key is never printed, logged, cached or written, and is blanked out of any server text quoted in an
error message.

The HTTP client (:func:`chat_completion`, the request deadline, the error types) is in
:mod:`avalanche_convprompt.language.descriptors.llm_client` and the command line in
:mod:`avalanche_convprompt.language.descriptors.cli`; this module keeps the generation (prompt,
parsing, retries, cache, output) and still exports their names.

Python API::

    from avalanche_convprompt.language.descriptors.generate import generate_descriptor_file
    ds = generate_descriptor_file(["apple", "aquarium_fish"], "fruit_fish.json",
                                  base_url="http://localhost:11434/v1", model="llama3.1")
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ...runs.files import write_json
from . import DescriptorSet, load_descriptors
# The HTTP client is in .llm_client and the command line in .cli; their names are importable from here
# too (the command line's on first use, see __getattr__ at the bottom), as before they moved.
from .llm_client import (  # noqa: F401 - re-exported
    _EXCERPT_CHARS,
    _MAX_RESPONSE_BYTES,
    DescriptorGenerationError,
    EndpointError,
    UnusableAnswerError,
    _Deadline,
    _DeadlineHTTPHandler,
    _DeadlineHTTPSHandler,
    _WatchedConnections,
    _display_url,
    _endpoint_url,
    _excerpt,
    _exchange,
    _http_error,
    _message_content,
    _one_line,
    _redact,
    _retry_after,
    _timeout_error,
    chat_completion,
)

__all__ = [
    "DescriptorGenerationError", "EndpointError", "UnusableAnswerError",
    "readable_name", "read_class_list", "normalize_classes", "build_messages", "chat_completion",
    "parse_descriptors", "ask_descriptors", "generate_descriptor_file", "cache_file_name", "main",  # noqa: F822 - main: see __getattr__
]

log = logging.getLogger(__name__)

DEFAULT_MAX_WORDS = 12
"""Descriptors longer than this many words are dropped (they are sentences, not attributes)."""
DEFAULT_MAX_BACKOFF = 60.0
"""Upper bound, in seconds, of one back-off wait."""


# ------------------------------------------------------------------------------------------ errors
# (the error classes are in .llm_client)

def _reworded(error: DescriptorGenerationError, message: str) -> DescriptorGenerationError:
    """A copy of ``error`` (same type and attributes) with a new message."""
    new = type(error)(message)
    new.__dict__.update(error.__dict__)
    new.__suppress_context__ = True
    return new


# ------------------------------------------------------------------------------------------ classes

def readable_name(key: str) -> str:
    """A prompt-friendly name for a class key: ``"aquarium_fish"`` -> ``"aquarium fish"``,
    ``"001.Black_footed_Albatross"`` -> ``"Black footed Albatross"``."""
    name = re.sub(r"^\d+\.", "", key.strip())
    name = _one_line(name.replace("_", " "))
    return name or key.strip()


def normalize_classes(classes: Iterable[str | tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    """``(key, readable name)`` pairs from keys (named by :func:`readable_name`), ``(key, name)``
    pairs or a ``{key: name}`` mapping.  Raises ``ValueError`` on empty or duplicate keys."""
    items = classes.items() if isinstance(classes, Mapping) else classes
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, str):
            key, name = item.strip(), readable_name(item)
        else:
            key, name = item
            key, name = str(key).strip(), _one_line(name or "") or readable_name(str(key))
        if not key:
            raise ValueError("empty class key in the class list")
        if key in seen:
            raise ValueError(f"class {key!r} is listed twice")
        seen.add(key)
        pairs.append((key, name))
    if not pairs:
        raise ValueError("the class list is empty")
    return pairs


def read_class_list(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a classes file: one class per line, ``key`` or ``key<TAB>readable name``; blank lines and
    lines starting with ``#`` are skipped.  Returns ``(key, name)`` pairs in file order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no classes file at {path!r}")
    pairs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" in line:
                key, name = line.split("\t", 1)
                pairs.append((key.strip(), _one_line(name) or readable_name(key)))
            else:
                pairs.append((line.strip(), readable_name(line)))
    try:
        return normalize_classes(pairs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------ prompt

def build_messages(name: str, *, dataset: str | None = None, min_descriptors: int = 5,
                   max_descriptors: int = 8) -> list[dict[str, str]]:
    """The chat messages asking for ``min_descriptors``-``max_descriptors`` short visual attributes of
    class ``name`` (shape, colour, texture, parts, context), answered as a JSON list of strings."""
    system = ("You describe what object categories look like in photographs, for an image classifier. "
              "You answer with a JSON list of strings and nothing else.")
    context = f" The photos come from the image dataset {dataset}." if dataset else ""
    user = (f"List {min_descriptors} to {max_descriptors} short visual attributes that help recognise "
            f"a photo of: \"{name}\".{context}\n"
            "Cover shape, colour, texture, distinctive parts and typical surroundings. Each attribute "
            "is a short phrase of 2 to 6 words, not a sentence, and does not repeat the category name.\n"
            f"Answer only with a JSON list of {min_descriptors} to {max_descriptors} strings, for example: "
            "[\"long curved neck\", \"white feathers\", \"orange beak with black knob\", "
            "\"webbed black feet\", \"floating on calm water\"]")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------------------ parsing

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.S)
# A bullet's marker and the space after it; the item is the rest of the line, stripped. Possessive
# quantifiers and no lazy group before an anchor: one pass over the line, whatever its spaces.
_BULLET = re.compile(r"\s*+(?:[-*\u2022\u2013\u2014+]|\(?\d{1,2}[.):]|\(?[a-hA-H][.)])\s++(?=\S)")
#: JSON starts tried per block without finding strings before the block is given up: each parse can
#: read to the block's end, so this bound keeps the JSON search linear in the answer's size.
_MAX_FRUITLESS_JSON_STARTS = 16
_LIST_KEYS = ("descriptors", "visual_descriptors", "attributes", "visual_attributes", "features",
              "visual_features", "characteristics", "items", "list")
_STRIP_EDGES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
_TRAILING_PUNCT = ".,;:!?\u3002"


def _strings_in(value: object, depth: int = 0) -> list[str] | None:
    """The list of strings a parsed JSON value holds: the value itself, or a list under a key such as
    ``"descriptors"`` (then any key), looking a few objects deep."""
    if depth > 3:
        return None
    if isinstance(value, list):
        strings = [v for v in value if isinstance(v, str)]
        if strings:
            return strings
        # [{"attribute": "round shape"}, ...]: the first string of each object
        texts = [next((x for x in v.values() if isinstance(x, str)), None) for v in value if isinstance(v, dict)]
        return [t for t in texts if t] or None
    if isinstance(value, dict):
        lowered = {str(k).lower().replace(" ", "_"): v for k, v in value.items()}
        for k in _LIST_KEYS:
            if k in lowered:
                found = _strings_in(lowered[k], depth + 1)
                if found:
                    return found
        for v in value.values():
            found = _strings_in(v, depth + 1)
            if found:
                return found
    return None


def _json_candidates(text: str) -> list[list[str]]:
    """The first JSON value holding strings in each fenced block, then in the whole text.

    Each ``[`` or ``{`` is tried in turn, as a JSON value's start. Linear in the text's size: a
    block is given up after ``_MAX_FRUITLESS_JSON_STARTS`` starts that gave nothing (a parse may
    read to the block's end before failing; ``[[[[...`` fails on the recursion limit).
    """
    candidates: list[list[str]] = []
    blocks = [m.group(2) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for block in blocks:
        block = block.strip()
        position = 0
        for _ in range(_MAX_FRUITLESS_JSON_STARTS):
            starts = [i for i in (block.find("[", position), block.find("{", position)) if i >= 0]
            if not starts:
                break
            start = min(starts)
            position = start + 1
            try:
                value, _ = decoder.raw_decode(block, start)
            except (json.JSONDecodeError, RecursionError):
                continue
            found = _strings_in(value)
            if found:
                candidates.append(found)
                break  # the first (outermost) JSON value of a block wins
    return candidates


def _bullet_candidate(text: str) -> list[str]:
    items = []
    for line in text.splitlines():
        m = _BULLET.match(line)
        if m:
            items.append(line[m.end():].strip())
    return items


def _clean(item: str) -> str:
    s = _one_line(item.replace("**", "").replace("__", ""))
    s = re.sub(r"^(?:[-*\u2022\u2013\u2014+]|\d{1,2}[.)])\s+", "", s)  # a bullet left inside JSON
    for _ in range(3):  # quotes and punctuation can nest: '"round shape."'
        s = s.strip(_STRIP_EDGES + " ").rstrip(_TRAILING_PUNCT + " ")
    return s


def clean_descriptors(items: Iterable[object], *, max_descriptors: int = 8,
                      max_words: int = DEFAULT_MAX_WORDS) -> list[str]:
    """Normalise whitespace, strip quotes and trailing punctuation, drop non-strings, empties, items
    of more than ``max_words`` words and case-insensitive duplicates; keep at most ``max_descriptors``."""
    out, seen = [], set()
    for item in items:
        if not isinstance(item, str):
            continue
        s = _clean(item)
        norm = s.lower()
        if not s or len(s.split()) > max_words or norm in seen:
            continue
        seen.add(norm)
        out.append(s)
        if len(out) == max_descriptors:
            break
    return out


def parse_descriptors(text: str, *, min_descriptors: int = 5, max_descriptors: int = 8,
                      max_words: int = DEFAULT_MAX_WORDS) -> list[str]:
    """The descriptors in a model's answer.

    Accepted, in this order: JSON inside ```` ``` ```` fences, then JSON anywhere in the text (a bare
    list, or an object with the list under ``"descriptors"``/``"attributes"``/... or any key), then
    bullet or numbered lines (``- round shape``, ``1. round shape``); ``<think>`` blocks are ignored.
    Items are cleaned by :func:`clean_descriptors`; the first candidate with at least
    ``min_descriptors`` usable items wins.  Otherwise raises :class:`UnusableAnswerError` quoting
    the start of the answer.
    """
    if not isinstance(text, str) or not text.strip():
        raise UnusableAnswerError("empty answer", answer=text if isinstance(text, str) else "")
    body = _THINK.sub("", text).strip() or text
    best: list[str] = []
    for raw in _json_candidates(body) + [_bullet_candidate(body)]:
        items = clean_descriptors(raw, max_descriptors=max_descriptors, max_words=max_words)
        if len(items) >= min_descriptors:
            return items
        if len(items) > len(best):
            best = items
    raise UnusableAnswerError(
        f"answer has {len(best)} usable descriptor{'s' if len(best) != 1 else ''}, need at least "
        f"{min_descriptors}: {_excerpt(text)}", answer=text)


# ------------------------------------------------------------------------------------------ retries

def _backoff_delay(attempt: int, backoff: float, max_backoff: float, retry_after: float | None) -> float:
    delay = backoff * (2 ** attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(0.0, min(delay, max_backoff))


def ask_descriptors(name: str, *, base_url: str, model: str, api_key: str | None = None,
                    api_key_env: str | None = None, dataset: str | None = None, timeout: float = 60.0,
                    max_retries: int = 4, backoff: float = 2.0, max_backoff: float = DEFAULT_MAX_BACKOFF,
                    min_descriptors: int = 5, max_descriptors: int = 8, max_words: int = DEFAULT_MAX_WORDS,
                    temperature: float | None = 0.0, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Descriptors of one class, asking up to ``max_retries + 1`` times.

    Connection errors, timeouts, HTTP 408/429/5xx and malformed or unusable answers are retried after
    ``min(backoff * 2**attempt, max_backoff)`` seconds (at least the server's ``Retry-After``); HTTP
    401/403/404 and other 4xx fail at once.  Raises :class:`DescriptorGenerationError`.
    """
    messages = build_messages(name, dataset=dataset, min_descriptors=min_descriptors,
                              max_descriptors=max_descriptors)
    attempts = max_retries + 1
    last: DescriptorGenerationError | None = None
    for attempt in range(attempts):
        retry_after = None
        try:
            answer = chat_completion(base_url, model, messages, api_key=api_key, timeout=timeout,
                                     temperature=temperature, api_key_env=api_key_env)
            return parse_descriptors(answer, min_descriptors=min_descriptors,
                                     max_descriptors=max_descriptors, max_words=max_words)
        except EndpointError as e:
            if not e.retryable:
                raise
            last, retry_after = e, e.retry_after
        except UnusableAnswerError as e:
            last = UnusableAnswerError(_redact(str(e), api_key), answer=e.answer)
        if attempt + 1 < attempts:
            delay = _backoff_delay(attempt, backoff, max_backoff, retry_after)
            log.warning("%r: attempt %d/%d failed (%s); retrying in %.2g s", name, attempt + 1, attempts,
                        last, delay)
            sleep(delay)
    assert last is not None
    raise _reworded(last, f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}: {last}")


# ------------------------------------------------------------------------------------------ files

def cache_file_name(key: str) -> str:
    """The cache file of class ``key``: a hash of the key, so any key is a safe file name."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".json"


def _remove_stale_temporaries(folder: Path, pattern: str) -> None:
    """Remove the temporary files (names matching the regex ``pattern``) that a killed run (SIGKILL,
    power loss) left behind in ``folder``."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if re.fullmatch(pattern, p.name) and p.is_file():
            try:
                p.unlink()
            except OSError:
                pass


def _read_cache(path: Path, key: str, name: str, min_descriptors: int, max_descriptors: int,
                max_words: int) -> dict | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("key") != key:
            raise ValueError(f"it holds class {doc.get('key')!r}")
        if doc.get("name") != name:
            return None  # the readable name (so the prompt) changed: ask again
        descs = clean_descriptors(doc["descriptors"], max_descriptors=max_descriptors, max_words=max_words)
        if len(descs) < min_descriptors:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring unreadable cache file %s for class %r (%s)", path, key, _one_line(str(e)))
        return None
    return {"key": key, "name": name, "descriptors": descs, "model": str(doc.get("model", ""))}


def generate_descriptor_file(class_names: Iterable[str | tuple[str, str]] | Mapping[str, str],
                             output_path: str | os.PathLike, *, base_url: str, model: str,
                             api_key_env: str | None = "OPENAI_API_KEY", dataset: str | None = None,
                             timeout: float = 60.0, max_retries: int = 4, backoff: float = 2.0,
                             max_backoff: float = DEFAULT_MAX_BACKOFF, min_descriptors: int = 5,
                             max_descriptors: int = 8, max_words: int = DEFAULT_MAX_WORDS,
                             cache_dir: str | os.PathLike | None = None, temperature: float | None = 0.0,
                             key_description: str | None = None, progress: bool = True) -> DescriptorSet:
    """Ask the model for the descriptors of every class and write them to ``output_path``.

    ``class_names``: keys (named by :func:`readable_name`), ``(key, name)`` pairs or ``{key: name}``.
    Each finished class is cached at once in ``cache_dir`` (default ``<output_path>.cache/``), one
    JSON file per class named by :func:`cache_file_name`, written atomically; cached classes are not
    asked again, so rerunning after an interruption resumes.  The output (schema of
    :mod:`avalanche_convprompt.language.descriptors`; ``dataset`` defaults to the output file's stem) is
    written atomically once every class is done, and returned as loaded by :func:`load_descriptors`.
    On failure the output file is not written (an older one is left as it was) and the cache holds
    only complete classes; raises :class:`DescriptorGenerationError` naming the class.  Cached classes
    are reused whatever model wrote them (the output's ``source`` lists the models) as long as their
    readable name is unchanged; delete the cache folder to start over.

    The API key comes from the environment variable ``api_key_env`` (none sent when unset/``None``).
    """
    if not 1 <= min_descriptors <= max_descriptors:
        raise ValueError(f"need 1 <= min_descriptors <= max_descriptors, got {min_descriptors}, {max_descriptors}")
    if max_retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError("need max_retries >= 0, timeout > 0 and backoff >= 0")
    if not str(model).strip():
        raise ValueError("the model name is empty")
    _endpoint_url(base_url)  # fail early on a malformed URL
    pairs = normalize_classes(class_names)
    output = Path(output_path)
    if output.is_dir():
        raise ValueError(f"output path {str(output)!r} is a folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else output.with_name(output.name + ".cache")
    created_cache = not cache.exists()
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache, r"\.[0-9a-f]{32}\.json\..+\.tmp")
    _remove_stale_temporaries(output.parent, re.escape(f".{output.name}.") + r".+\.tmp")
    api_key = (os.environ.get(api_key_env) or "").strip() if api_key_env else ""
    api_key = api_key or None

    from tqdm.auto import tqdm

    done: dict[str, dict] = {}
    for key, name in pairs:
        entry = _read_cache(cache / cache_file_name(key), key, name, min_descriptors, max_descriptors, max_words)
        if entry is not None:
            done[key] = entry
    if done:
        log.info("resuming: %d of %d classes already cached in %s", len(done), len(pairs), cache)

    bar = tqdm(total=len(pairs), initial=len(done), desc="descriptors", unit="class", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for key, name in pairs:
            if key in done:
                continue
            bar.set_postfix_str(name[:30], refresh=True)
            try:
                descs = ask_descriptors(name, base_url=base_url, model=model, api_key=api_key,
                                        api_key_env=api_key_env, dataset=dataset, timeout=timeout,
                                        max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                                        min_descriptors=min_descriptors, max_descriptors=max_descriptors,
                                        max_words=max_words, temperature=temperature)
            except DescriptorGenerationError as e:
                if created_cache and not done:
                    _rmdir_if_empty(cache)
                    where = "nothing was cached"
                else:
                    where = f"{len(done)} of {len(pairs)} classes are cached in {cache}"
                raise _reworded(e, f"class {key!r} ({name}): {e} [{where}; no output file was written; fix "
                                   "the problem and rerun the same command to resume]") from None
            entry = {"key": key, "name": name, "descriptors": descs, "model": model}
            write_json(cache / cache_file_name(key), entry)
            done[key] = entry
            bar.update(1)
    finally:
        bar.close()

    models = sorted({e["model"] for e in done.values() if e["model"]})
    doc = {
        "dataset": dataset or output.stem,
        "key": key_description or "class keys as listed in the class list given to the generator",
        "source": (f"generated by the language model{'s' if len(models) > 1 else ''} "
                   f"{', '.join(models) or model} through an OpenAI-compatible chat-completions endpoint "
                   "(avalanche_convprompt.language.descriptors.generate)"),
        "classes": {key: {"name": done[key]["name"], "descriptors": done[key]["descriptors"]}
                    for key, _ in pairs},
    }
    write_json(output, doc)
    return load_descriptors(output)


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def __getattr__(name: str):
    # The command line lives in .cli, which imports this module: looked up on first use, not at import.
    if name in ("main", "_parser", "_temperature"):
        from . import cli
        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from .cli import main as _main
    sys.exit(_main())
