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


@pytest_twisted.ensureDeferred
async def test_the_batch_example_in_batches_md_runs(tmp_path: Path) -> None:
    import contextlib
    import io

    from twisted.internet.threads import deferToThread

    from tests.harness import start_stack

    stack = await start_stack(tmp_path)
    try:
        code = _first_python_block("batches.md").replace(
            "http://127.0.0.1:8080/v1", stack.url + "/v1"
        )
        printed = io.StringIO()

        def run() -> None:
            with contextlib.redirect_stdout(printed):
                exec(compile(code, "docs/batches.md", "exec"), {})

        await deferToThread(run)
    finally:
        await stack.stop()
    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("completed BatchRequestCounts(")
    assert [line.split()[0] for line in lines[1:]] == [f"question-{i}" for i in range(3)]
