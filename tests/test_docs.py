"""The README stays short and every shell block in README.md and docs/ runs when pasted.

A reader copies commands from the docs: a `[--json]` bracket or a `<placeholder>` fails in the shell,
so they are refused here, every block must parse (`bash -n`), and every relative link must name a
file that exists. Pure text checks: no build, no network, well under a second.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 150
SHELL_LANGS = {"bash", "sh", "shell"}
FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)\s*$", re.M | re.S
)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
PLACEHOLDER = re.compile(r"\[--|<[A-Za-z][\w.-]*>")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_blocks() -> list[tuple[str, str]]:
    """(label, body) of every ```bash / ```sh / ```shell block, label = file:line."""
    blocks = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match["lang"].lower() in SHELL_LANGS:
                line = text.count("\n", 0, match.start()) + 1
                blocks.append((f"{path.relative_to(ROOT)}:{line}", match["body"]))
    return blocks


def relative_links() -> list[tuple[str, Path]]:
    """(label, resolved path) of every link that is neither a URL nor an in-page anchor, outside code."""
    links = []
    for path in doc_files():
        text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"))
        text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
        for match in LINK.finditer(text):
            target = match["target"]
            if SCHEME.match(target) or target.startswith("#"):
                continue
            line = text.count("\n", 0, match.start()) + 1
            links.append((f"{path.relative_to(ROOT)}:{line} -> {target}", path.parent / target.split("#", 1)[0]))
    return links


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/ (limit {README_MAX_LINES})"


def test_docs_have_shell_blocks() -> None:
    # guards the checks below against a parser that silently finds nothing
    assert len(shell_blocks()) >= 3


def test_shell_blocks_have_no_placeholders() -> None:
    bad = [
        f"{label}: {line.strip()}"
        for label, body in shell_blocks()
        for line in body.splitlines()
        if PLACEHOLDER.search(line)
    ]
    assert not bad, "placeholders fail when pasted (put optional flags in prose):\n" + "\n".join(bad)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_shell_blocks_parse() -> None:
    bad = []
    for label, body in shell_blocks():
        result = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True, check=False)
        if result.returncode:
            bad.append(f"{label}: {result.stderr.strip()}")
    assert not bad, "shell blocks that bash cannot parse:\n" + "\n".join(bad)


def test_relative_links_exist() -> None:
    links = relative_links()
    missing = [label for label, target in links if not target.exists()]
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


def test_checks_catch_what_they_claim() -> None:
    """The patterns refuse the README's old mistakes and accept plain commands."""
    assert PLACEHOLDER.search("python -m indexer info var/index [--json]")
    assert PLACEHOLDER.search("curl -F image=@<photo> localhost:8000")
    assert not PLACEHOLDER.search('curl -F image=@photo.jpg -F title="Mug" localhost:8000/api/v1/predict')
    assert not PLACEHOLDER.search('test -d var/index && [ -n "$X" ] || echo 2>/dev/null')
    assert subprocess.run(
        ["bash", "-n"], input="if true; then\n", capture_output=True, text=True, check=False
    ).returncode
    text = "```bash\nmake run\n```\n[a](missing.md) [b](https://x.org) [c](#top) `[d](inline.md)`\n"
    assert [m["body"] for m in FENCE.finditer(text)] == ["make run\n"]
    kept = [m["target"] for m in LINK.finditer(re.sub(r"`[^`\n]*`", "", text))]
    assert kept == ["missing.md", "https://x.org", "#top"]
