"""Every error code foreman's own routes can answer is listed in docs/jobs.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (
    "foreman/web/job_routes.py",
    "foreman/web/queue_routes.py",
    "foreman/web/routes.py",
    "foreman/web/site.py",
    "foreman/jobs/service.py",
)
#: the calls whose string arguments are error codes
RAISERS = {"BadRequest", "json_error"}
CODE = re.compile(r"[a-z]+(?:_[a-z]+)+")


def _codes(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in RAISERS:
                args = [*node.args, *(k.value for k in node.keywords)]
                found |= {
                    a.value
                    for a in args
                    if isinstance(a, ast.Constant)
                    and isinstance(a.value, str)
                    and CODE.fullmatch(a.value)
                }
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            # site.py's (status, code, message) answers for unexpected failures
            parts = node.value.elts
            if len(parts) == 3 and isinstance(parts[1], ast.Constant):
                value = parts[1].value
                if isinstance(value, str) and CODE.fullmatch(value):
                    found.add(value)
    return found


def test_every_error_code_is_documented() -> None:
    codes: set[str] = set()
    for source in SOURCES:
        codes |= _codes(ROOT / source)
    assert {"invalid_state", "method_not_allowed", "job_not_found"} <= codes  # the scan works
    doc = (ROOT / "docs" / "jobs.md").read_text()
    missing = sorted(c for c in codes if f"`{c}`" not in doc)
    assert not missing, f"docs/jobs.md does not list {missing}"


BATCH_SOURCES = (
    "foreman/web/batch_routes.py",
    "foreman/web/upload.py",
    "foreman/jobs/batches.py",
    "foreman/core/batchlines.py",
)


def _batch_codes(path: Path) -> set[str]:
    """Codes given to BadRequest/json_error/Refused, and the line checker's ``_error`` codes."""
    found = _codes(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            given = ("Refused", "NotFound", "_error", "LineError", "UploadTooLarge", "super")
            if name in given and node.args:
                first = node.args[0]
                if (
                    isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                    and CODE.fullmatch(first.value)
                ):
                    found.add(first.value)
    return found


def test_every_batch_error_code_is_documented() -> None:
    codes: set[str] = set()
    for source in BATCH_SOURCES:
        codes |= _batch_codes(ROOT / source)
    assert {"invalid_purpose", "duplicate_custom_id", "file_in_use"} <= codes  # the scan works
    doc = (ROOT / "docs" / "batches.md").read_text()
    missing = sorted(c for c in codes if f"`{c}`" not in doc)
    assert not missing, f"docs/batches.md does not list {missing}"
