"""The code examples in docs/ run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest_twisted

ROOT = Path(__file__).resolve().parent.parent


def _first_python_block(page: str) -> str:
    match = re.search(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
    assert match is not None, f"no python example in {page}"
    return match.group(1)


@pytest_twisted.ensureDeferred
async def test_the_simulator_example_in_testing_md_passes() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_first_python_block("testing.md"), "docs/testing.md", "exec"), namespace)
    example = namespace["test_my_app"]
    await example()  # the leak guard checks it leaves no connection behind
