"""Errors the service raises about client input, whatever carries the request.

They are raised below the web layer (the job service validates create
bodies), so they live in the core; the web layer turns them into replies.
"""

from __future__ import annotations

__all__ = ["BadRequest"]


class BadRequest(Exception):
    """Client input is wrong; carries the error code and HTTP status for the reply."""

    def __init__(self, message: str, code: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
