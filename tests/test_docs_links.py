"""Every relative link and anchor in README.md, CHANGELOG.md and docs/*.md points at something that exists."""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *([ROOT / "CHANGELOG.md"]
                                                                    if (ROOT / "CHANGELOG.md").exists() else [])])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> str:
    """The page without fenced code blocks (links there are code, not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but '-' and '_'), spaces to '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    seen, out = {}, set()
    for line in _prose(page.read_text(encoding="utf-8")).splitlines():
        found = re.match(r"^#{1,6}\s+(.*)$", line)
        if found:
            base = github_anchor(found.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def links(page: Path):
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
            continue
        yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {os.path.relpath(resolved, ROOT)}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {os.path.relpath(resolved, ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# A `code` heading, with: punctuation\n## Twice\n## Twice\n")
    page.write_text("[ok](other.md#a-code-heading-with-punctuation) [ok](other.md#twice-1) [bad](missing.md) "
                    "[bad](other.md#nowhere)\n```\n[code](not-a-link.md)\n```\n")
    assert list(links(page)) == ["other.md#a-code-heading-with-punctuation", "other.md#twice-1", "missing.md",
                                 "other.md#nowhere"]
    assert anchors(tmp_path / "other.md") == {"a-code-heading-with-punctuation", "twice", "twice-1"}


# A path of this repository named in prose, e.g. `scripts/pretrain_offline_backbone.py` or
# `python scripts/test.sh`; a path followed by `$`, `*`, `{` or `<` is a pattern, not a file.
CODE_SPAN = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"(?<![\w./-])((?:avalanche_convprompt|benchmarks|docs|examples|scripts|tests)/[\w./-]*\w)"
                       r"(?![\w/$*{<-])")


def repo_paths(page: Path):
    """Repository paths in the page's inline code, but not in a span right after "Avalanche's" (a file of that repo)."""
    prose = _prose(page.read_text(encoding="utf-8"))
    for span in CODE_SPAN.finditer(prose):
        if prose[:span.start()].endswith("Avalanche's "):
            continue
        yield from REPO_PATH.findall(span.group(1))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_inline_code_exist(page):
    missing = sorted({p for p in repo_paths(page) if not (ROOT / p).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names files that are not in the repository: {missing}"


def test_the_path_checker_finds_paths_in_inline_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `python scripts/test.sh -k x` and see `avalanche_convprompt/assets/gone.pt`; "
                    "Avalanche's `examples/naive.py`; `benchmarks/results/seed$s.json`, `docs/*.md`; "
                    "scripts/plain.py is prose\n```\n`tests/in_a_fence.py`\n```\n")
    assert list(repo_paths(page)) == ["scripts/test.sh", "avalanche_convprompt/assets/gone.pt"]
