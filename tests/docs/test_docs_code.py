"""Every ```python block of the documentation runs.

One test per page (``docs/**/*.md`` and ``README.md``): the page's python blocks run in
order, in one namespace, in a temporary working directory; any exception fails the
page. Blocks in other languages (bash, text) are not run.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]

# An opening fence (``` or ~~~, possibly indented), its info string, and the body up to
# the matching closing fence.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of each python block, in the order of the page."""
    blocks = []
    for match in FENCE.finditer(text):
        language = match["info"].strip().split(" ")[0].lower() if match["info"].strip() else ""
        if language in ("python", "py", "python3"):
            line = text.count("\n", 0, match.start("body")) + 1
            blocks.append((line, textwrap.dedent(match["body"])))
    return blocks


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page.read_text(encoding="utf-8"))]


def test_the_block_finder():
    text = "x\n```python\na = 1\n```\n\n```bash\nexit 1\n```\n    ```py\n    b = 2\n    ```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (10, "b = 2\n")]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=page_id)
def test_page_code_runs(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for line, source in python_blocks(page.read_text(encoding="utf-8")):
        # pad with blank lines so that tracebacks give the line number in the page
        code = compile("\n" * (line - 1) + source, f"{page_id(page)}", "exec")
        try:
            exec(code, namespace)
        except Exception as error:  # report which block of which page failed
            raise AssertionError(f"the python block at {page_id(page)}:{line} raised {error!r}") from error
