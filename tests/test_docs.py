"""The repository explains itself: no committed file points outside it, every relative link in
its hand-written pages (every README.md, CHANGELOG.md, docs/*.md) reaches a file (and a heading,
where it names one) in the repository, and the README's headline table is the committed one."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Places outside a clone that documentation once pointed to (the developers' work folder and the
# `shared` notes beside it), and the background documents kept there, whose content now lives in
# docs/ (a file of one of these names in the repository is fine). Why these: docs/architecture.md,
# "The repository stands alone".
OUTSIDE = re.compile(r"/work/|shared/docs|shared/tools")
FORMER_DOCUMENTS = re.compile(
    r"\b(?:algorithms|offline-assets|reference-anchor|design)\.md\b|\banchor_data\.py\b"
)
# A relative path climbing out of its file's folder: `../` once or more, then the rest of the path.
PARENT_PATH = re.compile(r"(?:\.\./)+[^\s'\"`()\[\]<>,;|]*")
# Run records name where their input files lay on the machine that ran them: provenance that is
# never followed, not a pointer.
RUN_RECORDS = {
    "results/tuning/revisit-legal.jsonl",
    "results/tuning/revisit-medical.jsonl",
    "results/tables/dpruner_tuning.md",
}
# This file spells out the patterns it looks for.
NOT_CHECKED = {Path(__file__).resolve().relative_to(ROOT).as_posix()}
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def committed_files() -> list[str]:
    """The repository's tracked file names (`git ls-files`); the test skips outside a clone."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in listed.decode().split("\0") if name]


def committed_text_files() -> dict[str, str]:
    files = {}
    for name in committed_files():
        path = ROOT / name
        if name in NOT_CHECKED or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def outside_references(name: str, text: str, committed: frozenset[str] = frozenset()) -> list[str]:
    """`file:line: reference` for every path in `text` that leads outside the repository
    (`committed`: the repository's file names, which former document names may reuse)."""
    found = []
    folder = (ROOT / name).parent
    for number, line in enumerate(text.splitlines(), start=1):
        hits = [m.group(0) for m in OUTSIDE.finditer(line) if name not in RUN_RECORDS]
        hits += [m.group(0) for m in FORMER_DOCUMENTS.finditer(line) if m.group(0) not in committed]
        for match in PARENT_PATH.finditer(line):
            target = Path(os.path.normpath(folder / match.group(0)))
            if not target.is_relative_to(ROOT):
                hits.append(match.group(0))
        found += [f"{name}:{number}: {hit}" for hit in hits]
    return found


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces
    turned into hyphens, repeats numbered."""
    anchors: set[str] = set()
    for line in FENCE.sub("", markdown).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        candidate, repeat = slug, 0
        while candidate in anchors:
            repeat += 1
            candidate = f"{slug}-{repeat}"
        anchors.add(candidate)
    return anchors


def broken_links(name: str, text: str) -> list[str]:
    """`file: link (why)` for every relative link that does not reach its file or heading."""
    broken = []
    source = ROOT / name
    for link in MARKDOWN_LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto: ...
            continue
        path, _, anchor = link.partition("#")
        target = Path(os.path.normpath(source.parent / path)) if path else source
        if not target.is_relative_to(ROOT) or not target.exists():
            broken.append(f"{name}: {link} (no such file)")
        elif (
            anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text())
        ):
            broken.append(f"{name}: {link} (no such heading)")
    return broken


def test_no_committed_file_points_outside_the_repository():
    files = committed_text_files()
    committed = frozenset(Path(name).name for name in files)
    found = [
        reference
        for name, text in files.items()
        for reference in outside_references(name, text, committed)
    ]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_outside_references_are_recognised():
    assert outside_references("docs/x.md", "see ../shared/docs/algorithms.md")
    assert outside_references("README.md", "see `../README.md` and /work/main")
    assert outside_references("dpruner/x.py", "(shared/tools/anchor_data.py)")
    assert outside_references("dpruner/x.py", "as in algorithms.md 5.2")
    assert not outside_references("dpruner/x.py", "see design.md", frozenset({"design.md"}))
    assert not outside_references("rules/x.smk", '"../envs/dpruner.yaml"')
    assert not outside_references("docs/x.md", "[gpu](../config/gpu.yaml)")


def documentation_pages(names) -> list[str]:
    """The hand-written pages among committed file names (not generated tables or summaries)."""
    return [
        name
        for name in names
        if Path(name).name == "README.md"
        or name == "CHANGELOG.md"
        or re.fullmatch(r"docs/[^/]+\.md", name)
    ]


def test_every_relative_documentation_link_resolves():
    files = committed_text_files()
    pages = documentation_pages(files)
    broken = [problem for name in pages for problem in broken_links(name, files[name])]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_broken_links_and_headings_are_recognised():
    assert broken_links("README.md", "[x](docs/no-such-page.md)")
    assert broken_links("README.md", "[x](docs/methods.md#no-such-heading)")
    assert not broken_links("README.md", "[x](docs/methods.md#wanda) [y](https://example.org)")
    assert heading_anchors("## 2:4 results depend on X\n## Step 2: a, b\n## A\n## A") == {
        "24-results-depend-on-x",
        "step-2-a-b",
        "a",
        "a-1",
    }


def test_documentation_pages_are_every_readme_the_changelog_and_docs():
    names = ["README.md", "results/README.md", "config/studies/README.md", "CHANGELOG.md"]
    names += ["docs/tuning.md", "results/summary.md", "results/tables/main.md", "docs/x/y.md"]
    assert documentation_pages(names) == names[:5]


@pytest.mark.parametrize("table", ["main.md", "leaderboard.md"])
def test_readme_headline_table_is_the_committed_table_verbatim(table):
    committed = (ROOT / "results" / "tables" / table).read_text().strip()
    assert committed in (ROOT / "README.md").read_text(), (
        f"README.md's copy differs from results/tables/{table}: copy the file's text"
    )
