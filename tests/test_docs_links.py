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
