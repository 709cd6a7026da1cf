"""The command line of the descriptor generator.

    python -m avalanche_convprompt.language.descriptors.generate --classes-file classes.txt \\
        --output my_dataset.json --base-url http://localhost:11434/v1 --model llama3.1

(:mod:`avalanche_convprompt.language.descriptors.generate` runs :func:`main` from here; the work is
its :func:`~avalanche_convprompt.language.descriptors.generate.generate_descriptor_file`.)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from .generate import generate_descriptor_file, log, normalize_classes, read_class_list
from .llm_client import DescriptorGenerationError, _one_line, _redact

__all__ = ["main"]


# ------------------------------------------------------------------------------------------ CLI

def _temperature(text: str) -> float | None:
    if text.strip().lower() in ("none", "default", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'none': {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m avalanche_convprompt.language.descriptors.generate",
        description="Write a ConvPrompt descriptor file by asking a language model through an "
                    "OpenAI-compatible chat-completions endpoint (hosted, vLLM, Ollama...). Finished "
                    "classes are cached next to the output, so rerunning resumes an interrupted run.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--classes-file", help="one class per line ('key' or 'key<TAB>readable name'); "
                                            "blank lines and # comments are skipped")
    src.add_argument("--classes", nargs="+", metavar="CLASS", help="class names on the command line")
    p.add_argument("--output", "-o", required=True, help="descriptor JSON file to write")
    p.add_argument("--base-url", required=True,
                   help="endpoint base URL including the API prefix, e.g. http://localhost:11434/v1 "
                        "(Ollama), http://localhost:8000/v1 (vLLM), https://api.openai.com/v1")
    p.add_argument("--model", required=True, help="model name as the server knows it")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default: %(default)s; optional for "
                        "local servers). The key itself is never accepted on the command line")
    p.add_argument("--dataset", help="dataset name for the file and the prompt (default: output file stem)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds per request, one deadline for connecting, the headers and the whole "
                        "answer (default: %(default)s)")
    p.add_argument("--retries", type=int, default=4, help="retries per class (default: %(default)s)")
    p.add_argument("--backoff", type=float, default=2.0,
                   help="first back-off wait in seconds, doubled each retry (default: %(default)s)")
    p.add_argument("--temperature", type=_temperature, default=0.0,
                   help="sampling temperature, or 'none' to leave it to the server (default: %(default)s)")
    p.add_argument("--min-descriptors", type=int, default=5, help="default: %(default)s")
    p.add_argument("--max-descriptors", type=int, default=8, help="default: %(default)s")
    p.add_argument("--cache-dir", help="per-class cache folder (default: <output>.cache)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no retry messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 error, 130 interrupted)."""
    args = _parser().parse_args(argv)
    prog = "generate-descriptors"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.ERROR if args.quiet else logging.INFO)
    try:
        classes = read_class_list(args.classes_file) if args.classes_file else normalize_classes(args.classes)
        from tqdm.contrib.logging import logging_redirect_tqdm
        with logging_redirect_tqdm(loggers=[log]):
            ds = generate_descriptor_file(
                classes, args.output, base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                dataset=args.dataset, timeout=args.timeout, max_retries=args.retries, backoff=args.backoff,
                min_descriptors=args.min_descriptors, max_descriptors=args.max_descriptors,
                cache_dir=args.cache_dir, temperature=args.temperature, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished classes are cached, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (DescriptorGenerationError, ValueError, OSError) as e:
        print(f"{prog}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a one-line message, as promised, even for surprises
        secret = os.environ.get(args.api_key_env or "", "").strip() or None
        print(f"{prog}: error: unexpected {type(e).__name__}: {_one_line(_redact(str(e), secret))}",
              file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    print(f"wrote {len(ds)} class{'es' if len(ds) != 1 else ''} to {args.output}")
    return 0
