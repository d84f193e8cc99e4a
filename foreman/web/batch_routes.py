"""``/v1/files`` and ``/v1/batches``: OpenAI's Batch API on foreman's queue (ADR 0018).

Handlers translate HTTP to the batch service and back; errors come out in
OpenAI's shape (``json_error`` picks it from the ``/v1`` path), so the
``openai`` client raises its own exception types for them.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from klein import Klein
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import FileSender

from foreman.core.batchview import file_object
from foreman.core.ids import BATCH_ID, FILE_ID
from foreman.jobs.batches import NotFound, Refused
from foreman.web.httpjson import (
    BadRequest,
    int_arg,
    json_error,
    json_response,
    read_json,
    seconds_arg,
    text_arg,
)
from foreman.web.job_routes import request_base_url
from foreman.web.view import DaemonView

__all__ = ["register"]

_MAX_WAIT = 60.0
_PURPOSES = ("batch",)


def _wait_args(request: Any) -> tuple[float, str | None, int | None]:
    wait = seconds_arg(request, "wait", _MAX_WAIT)
    if not wait:
        return 0.0, None, None
    status = text_arg(request, "status") or None
    done = int_arg(request, "done", -1, -1, 10**9)
    return wait, status, None if done < 0 else done


def register(app: Klein, daemon: DaemonView) -> None:
    batches = daemon.batches

    @app.handle_errors(NotFound)
    def batch_not_found(request: Any, failure: Any) -> bytes:
        e: NotFound = failure.value
        return json_error(request, 404, e.code, str(e))

    @app.handle_errors(Refused)
    def batch_refused(request: Any, failure: Any) -> bytes:
        e: Refused = failure.value
        return json_error(request, 409, e.code, str(e))

    # -- files

    @app.route("/v1/files", methods=["POST"])
    async def file_upload(request: Any) -> bytes:
        sink = request.upload
        if sink is None:
            raise BadRequest("expected a multipart/form-data upload", "invalid_request")
        done = await sink.result()
        purpose = done.fields.get("purpose", "").strip()
        if purpose not in _PURPOSES:
            await done.writer.abort()
            given = f"{purpose!r}" if purpose else "none"
            raise BadRequest(
                f"purpose must be 'batch' (foreman stores files for batches), got {given}",
                "invalid_purpose",
            )
        body = await batches.add_file(done.writer, done.filename, purpose)
        return json_response(request, body)

    @app.route("/v1/files", methods=["GET"])
    async def files_list(request: Any) -> bytes:
        purpose = text_arg(request, "purpose") or None
        after = text_arg(request, "after") or None
        if after is not None and not FILE_ID.match(after):
            raise BadRequest("after must be a file id", "invalid_cursor")
        order = text_arg(request, "order") or "desc"
        if order not in ("asc", "desc"):
            raise BadRequest("order must be asc or desc", "invalid_parameter")
        limit = int_arg(request, "limit", 10000, 1, 10000)
        page = await batches.list_files(purpose, after, limit, order == "desc")
        return json_response(request, page)

    @app.route("/v1/files/<file_id>", methods=["GET"])
    async def file_get(request: Any, file_id: str) -> bytes:
        return json_response(request, file_object(await batches.file_row(file_id)))

    @app.route("/v1/files/<file_id>", methods=["DELETE"])
    async def file_delete(request: Any, file_id: str) -> bytes:
        return json_response(request, await batches.delete_file(file_id))

    @app.route("/v1/files/<file_id>/content", methods=["GET", "HEAD"])
    async def file_content(request: Any, file_id: str) -> bytes:
        row = await batches.file_row(file_id)
        path = batches.files.path(row.id)
        try:
            f = await deferToThread(open, path, "rb") if path is not None else None
        except FileNotFoundError:
            f = None
        if f is None:
            raise NotFound("file_not_found", f"file {file_id} has no content on disk")
        try:
            request.setHeader(b"content-type", b"application/jsonl")
            request.setHeader(b"content-length", b"%d" % os.fstat(f.fileno()).st_size)
            ascii_name = row.filename.encode("ascii", "replace").decode().replace("?", "_")
            disposition = (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(row.filename)}"
            )
            request.setHeader(b"content-disposition", disposition.encode())
            if request.method != b"HEAD":
                # small reads as the client takes them: never the whole file in memory
                await FileSender().beginFileTransfer(f, request)
        finally:
            f.close()
        return b""

    # -- batches

    @app.route("/v1/batches", methods=["POST"])
    async def batch_create(request: Any) -> bytes:
        base = daemon.public_url or request_base_url(request, daemon.trusted_proxies)
        return json_response(request, await batches.create(read_json(request), base))

    @app.route("/v1/batches", methods=["GET"])
    async def batch_list(request: Any) -> bytes:
        after = text_arg(request, "after") or None
        if after is not None and not BATCH_ID.match(after):
            raise BadRequest("after must be a batch id", "invalid_cursor")
        limit = int_arg(request, "limit", 20, 1, 100)
        return json_response(request, await batches.list_page(after, limit))

    @app.route("/v1/batches/<batch_id>", methods=["GET"])
    async def batch_get(request: Any, batch_id: str) -> bytes:
        wait, status, done = _wait_args(request)
        if wait > 0:
            return json_response(request, await batches.wait(batch_id, status, done, wait))
        return json_response(request, await batches.get(batch_id))

    @app.route("/v1/batches/<batch_id>/cancel", methods=["POST"])
    async def batch_cancel(request: Any, batch_id: str) -> bytes:
        return json_response(request, await batches.cancel(batch_id))
