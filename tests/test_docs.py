"""The user guides hold together: every relative link and anchor resolves, and nothing in the
repository cites a file a newcomer does not have (the design notes the project started from
live in docs/ now)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"\b(DESIGN|STACK|STYLE)\.md\b")


def anchors(page: Path) -> set[str]:
    """GitHub's heading slugs (lower case, punctuation dropped, spaces to hyphens) and explicit ids."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[`*]", "", heading.group(1).strip()).lower()
            text = re.sub(r"[^\w\- ]", "", text)
            out.add(text.replace(" ", "-"))
        out.update(re.findall(r'<a (?:id|name)="([^"]+)"', line))
    return out


def links(page: Path):
    for match in LINK.finditer(page.read_text(encoding="utf-8")):
        target = match.group(1) or match.group(2)
        if not re.match(r"[a-z]+:", target):  # not http:, https:, mailto:
            yield target


def test_there_are_guides_and_links():
    assert len(PAGES) >= 8
    assert sum(1 for page in PAGES for _ in links(page)) > 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_nothing_cites_files_outside_the_repository():
    files = [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py"),
             *ROOT.joinpath("benchmarks").glob("*.py"), *PAGES]
    cites = [f"{f.relative_to(ROOT)}:{i}" for f in files if f != Path(__file__).resolve()
             for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert not cites, "cites DESIGN.md / STACK.md / STYLE.md (not in the repository): " + ", ".join(cites)
