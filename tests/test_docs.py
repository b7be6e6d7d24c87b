"""The repository's documents against the tree they describe: README.md's twins table against
rust-ws/src and python-ws/python_ws, and every relative markdown link against the files and
headings it points at.

The twins table is the one map of the two servers (README.md, "The two servers"); nothing else
lists the files, so a file added or renamed in either twin fails here until its row is written.
A link or anchor that no longer resolves fails here too, with the file and line that hold it.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TWINS = {"rust-ws/src": "*.rs", "python-ws/python_ws": "*.py"}
# A file cell names its files in backticks (`hub.rs`, or several: `a.rs`, `b.rs`); other
# backticked text there (`rocket(config)`) is not a file name.
FILE_NAME = re.compile(r"`([\w.-]+\.(?:rs|py))`")
# A twin with no file for a concern says "—" and then why.
NONE = "\N{EM DASH}"


# ---- the twins table ---------------------------------------------------------------------------


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def twins_table() -> list[tuple[int, dict[str, str]]]:
    """README.md's twins table: (line number, {column header: cell}) per row."""
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        head = cells(line) if line.startswith("|") else []
        if all(t in head for t in TWINS):
            rows = []
            for j in range(i + 2, len(lines)):  # past the header and its |---| line
                if not lines[j].startswith("|"):
                    break
                rows.append((j + 1, dict(zip(head, cells(lines[j]), strict=True))))
            return rows
    raise AssertionError(
        f"README.md has no table whose header names {' and '.join(TWINS)}: the twins table "
        "(section 'The two servers') is where the map of the two servers lives"
    )


def test_the_twins_table_names_every_file_of_both_servers_once() -> None:
    rows = twins_table()
    problems = []
    for twin, pattern in TWINS.items():
        named: Counter[str] = Counter()
        where: dict[str, list[int]] = {}
        for line, row in rows:
            cell = row[twin]
            files = FILE_NAME.findall(cell)
            if cell.startswith(NONE):
                if len(cell.strip(NONE + " :;,.")) == 0:
                    problems.append(
                        f"README.md:{line}: the {twin} cell says {NONE} without saying why"
                    )
                continue  # a reason may name files that hold the work elsewhere
            if not files:
                problems.append(
                    f"README.md:{line}: the {twin} cell names no file in backticks and does not "
                    f"start with {NONE} (and why)"
                )
            for f in files:
                named[f] += 1
                where.setdefault(f, []).append(line)
        on_disk = {p.name for p in (ROOT / twin).glob(pattern)}
        for f in sorted(on_disk - set(named)):
            problems.append(f"{twin}/{f} is not in README.md's twins table: add it to a row")
        for f in sorted(set(named) - on_disk):
            lines = ", ".join(f"README.md:{n}" for n in where[f])
            problems.append(f"{lines} names {twin}/{f}, which does not exist")
        for f, n in sorted(named.items()):
            if n > 1:
                lines = ", ".join(f"README.md:{n}" for n in where[f])
                problems.append(f"{twin}/{f} is in {n} rows of the twins table ({lines}): keep one")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ---- links and anchors -------------------------------------------------------------------------


def markdown_files() -> list[Path]:
    """The repository's own markdown: what git tracks, less the vendored upstream Rocket."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "*.md"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout
    vendored = "rust-ws/vendor/rocket-"
    return [ROOT / p for p in out.split("\0") if p and not p.startswith(vendored)]


FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)([^`\n]+?)\1")
INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): the text without markup, lower case,
    every character that is not a letter, mark, digit, connector, space or hyphen dropped, and
    each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text only
    text = re.sub(r"<[^>]+>", "", text).lower()
    keep = []
    for c in text:
        if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc":
            keep.append("-" if c == " " else c)
    return "".join(keep)


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, numbered as GitHub numbers repeated headings (`x`, `x-1`, ...)."""
    seen: Counter[str] = Counter()
    out = set()
    for _, line in prose_lines(path):
        m = HEADING.match(line)
        if not m:
            continue
        s = slug(m.group(1))
        out.add(s if seen[s] == 0 else f"{s}-{seen[s]}")
        seen[s] += 1
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition; a link's
    text may run over several lines."""
    out = []
    lines = dict(prose_lines(path))
    for n, line in lines.items():
        m = REFERENCE_DEF.match(line)
        if m:
            out.append((n, m.group(1)))
    # Fenced code as blank lines, so offsets still give line numbers; code spans are not links,
    # but a link's text may hold one: keep the span's place.
    last = max(lines, default=0)
    text = "\n".join(lines.get(n, "") for n in range(1, last + 1))
    text = CODE_SPAN.sub("code", text)
    for m in INLINE_LINK.finditer(text):
        out.append((text.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return sorted(out)


def test_every_relative_link_and_anchor_in_the_markdown_resolves() -> None:
    problems = []
    cache: dict[Path, set[str]] = {}
    for md in markdown_files():
        rel = md.relative_to(ROOT)
        for line, target in links(md):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto: ...: not a file of this repository
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            if not dest.exists():
                problems.append(f"{rel}:{line}: {target}: no file {file_part}")
                continue
            if not anchor:
                continue
            if dest.suffix != ".md":
                problems.append(
                    f"{rel}:{line}: {target}: an anchor into a file that is not markdown"
                )
                continue
            found = cache.setdefault(dest, anchors(dest))
            if anchor not in found:
                close = sorted(a for a in found if a.split("-")[0] == anchor.split("-")[0])
                hint = f" (headings there: {', '.join(close)})" if close else ""
                problems.append(
                    f"{rel}:{line}: {target}: {dest.relative_to(ROOT)} has no heading "
                    f"#{anchor}{hint}"
                )
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
