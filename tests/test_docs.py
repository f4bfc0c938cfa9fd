"""The README's and the documentation's examples run, their links resolve, and the
tree is ruff clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from volcache.bench import servers

from .conftest import require

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [page for page in PAGES if "_build" not in page.parts]
# What an example needs, by what its code calls.
NEEDS = {'running("redis")': "redis", 'running("memcached")': "memcached",
         "running_cluster(": "redis-cluster"}  # fmt: skip


def examples() -> list[tuple[str, str]]:
    """(an id naming page and block, the block's code) for every ```python block."""
    found = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for n, source in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            found.append((f"{name}:{n}", source))
    return found


EXAMPLES = examples()


def test_the_docs_have_examples_on_every_guide():
    """Each guide shows code: a page of prose alone is a reference, not a guide."""
    guides = sorted((ROOT / "docs" / "guides").glob("*.md"))
    assert len(guides) >= 8
    named = {name.split(":")[0] for name, _ in EXAMPLES}
    assert {g.relative_to(ROOT).as_posix() for g in guides} <= named


@pytest.mark.parametrize("source", [s for _, s in EXAMPLES], ids=[n for n, _ in EXAMPLES])
def test_example_runs(source, capsys):
    """Each python block runs and prints what its comments say."""
    for call, kind in NEEDS.items():
        if call in source:
            program = "redis" if kind == "redis-cluster" else kind
            require(kind, servers.missing(program))
    exec(compile(source, "example", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    expected = [m.group(1) for m in re.finditer(r"print\(.*\)[ \t]+# (.*)", source)]
    assert expected or "print(" not in source, "a print without the text it prints"
    assert [line.strip() for line in printed[: len(expected)]] == expected


def test_readme_is_the_front_door():
    """About 150 lines, and every page it links to exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    links = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", readme)
    assert len(links) >= 5
    for link in links:
        assert (ROOT / link).exists(), link


def test_links_between_pages_resolve():
    """{doc}`...` roles and relative Markdown links name pages that exist."""
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", text):
            assert (page.parent / f"{target}.md").exists(), f"{page.name}: {target}"
        for target in re.findall(r"\]\((\.\./[^)#]+|[a-z][\w/.-]*\.(?:md|json|png))\)", text):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_ruff_is_clean():
    """ruff check and ruff format agree with the tree."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the 'test' extra)")
    for args in (["check", "."], ["format", "--check", "."]):
        run = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
