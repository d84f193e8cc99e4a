"""How one generation is rendered on each inference route (bytes per chunk). Pure.

A :class:`~foreman.testing._content.Plan` becomes a list of pieces (thinking
tokens, reply tokens, tool calls); a format renders each piece as a stream
chunk (NDJSON line or SSE event), the stream's end, the whole non-streaming
body, and an in-stream error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from attrs import frozen

from foreman.testing import _shapes as shapes
from foreman.testing._content import Plan


@frozen
class Piece:
    kind: str
    """``thinking``, ``content`` or ``tools``."""
    text: str = ""


def pieces(plan: Plan) -> list[Piece]:
    """Stream pieces in order: thinking, reply tokens, then tool calls (one piece)."""
    result = [Piece("thinking", token) for token in plan.thinking]
    result += [Piece("content", token) for token in plan.content]
    if plan.tool_calls:
        result.append(Piece("tools"))
    return result


NDJSON_TYPE = b"application/x-ndjson"
SSE_TYPE = b"text/event-stream"


class Format(Protocol):
    @property
    def stream_type(self) -> bytes: ...

    def chunk(self, piece: Piece, now: float) -> bytes: ...

    def final(self, stats: shapes.Stats, now: float) -> bytes: ...

    def whole(self, stats: shapes.Stats, now: float) -> dict[str, Any]: ...

    def error_chunk(self, message: str, now: float) -> bytes: ...


@frozen
class NativeChat:
    model: str
    plan: Plan
    call_ids: Sequence[str]
    stream_type: bytes = NDJSON_TYPE

    def chunk(self, piece: Piece, now: float) -> bytes:
        if piece.kind == "thinking":
            return shapes.ndjson(shapes.chat_chunk(self.model, now, thinking=piece.text))
        if piece.kind == "tools":
            calls = shapes.native_tool_calls(self.plan.tool_calls, self.call_ids)
            return shapes.ndjson(shapes.chat_chunk(self.model, now, tool_calls=calls))
        return shapes.ndjson(shapes.chat_chunk(self.model, now, content=piece.text))

    def final(self, stats: shapes.Stats, now: float) -> bytes:
        return shapes.ndjson(shapes.chat_final(self.model, now, self.plan.done_reason, stats))

    def whole(self, stats: shapes.Stats, now: float) -> dict[str, Any]:
        message = shapes.chat_message(self.plan, self.call_ids)
        return shapes.chat_final(self.model, now, self.plan.done_reason, stats, message)

    def error_chunk(self, message: str, now: float) -> bytes:
        return shapes.ndjson(shapes.ollama_error(message))


@frozen
class NativeGenerate:
    model: str
    plan: Plan
    context: list[int]
    stream_type: bytes = NDJSON_TYPE

    def chunk(self, piece: Piece, now: float) -> bytes:
        if piece.kind == "thinking":
            return shapes.ndjson(shapes.generate_chunk(self.model, now, thinking=piece.text))
        if piece.kind == "tools":
            return b""
        return shapes.ndjson(shapes.generate_chunk(self.model, now, response=piece.text))

    def final(self, stats: shapes.Stats, now: float) -> bytes:
        body = shapes.generate_final(
            self.model, now, self.plan.done_reason, stats, context=self.context
        )
        return shapes.ndjson(body)

    def whole(self, stats: shapes.Stats, now: float) -> dict[str, Any]:
        return shapes.generate_final(
            self.model,
            now,
            self.plan.done_reason,
            stats,
            response=self.plan.text,
            thinking=self.plan.thinking_text or None,
            context=self.context,
        )

    def error_chunk(self, message: str, now: float) -> bytes:
        return shapes.ndjson(shapes.ollama_error(message))


@frozen
class OpenAIChat:
    cid: str
    model: str
    plan: Plan
    call_ids: Sequence[str]
    include_usage: bool
    stream_type: bytes = SSE_TYPE

    def _event(self, delta: dict[str, Any], now: float, finish: str | None = None) -> bytes:
        return shapes.sse(shapes.chat_completion_chunk(self.cid, self.model, now, delta, finish))

    def chunk(self, piece: Piece, now: float) -> bytes:
        delta: dict[str, Any]
        if piece.kind == "thinking":
            delta = {"role": "assistant", "content": "", "reasoning": piece.text}
        elif piece.kind == "tools":
            calls = shapes.openai_tool_calls(self.plan.tool_calls, self.call_ids)
            delta = {"role": "assistant", "content": "", "tool_calls": calls}
        else:
            delta = {"role": "assistant", "content": piece.text}
        return self._event(delta, now)

    def final(self, stats: shapes.Stats, now: float) -> bytes:
        end = self._event(
            {"role": "assistant", "content": ""}, now, shapes.finish_reason(self.plan)
        )
        if self.include_usage:
            chunk = shapes.usage_chunk(
                "chat.completion.chunk", self.cid, self.model, now, self.plan
            )
            end += shapes.sse(chunk)
        return end + shapes.SSE_DONE

    def whole(self, stats: shapes.Stats, now: float) -> dict[str, Any]:
        return shapes.chat_completion(self.cid, self.model, now, self.plan, self.call_ids)

    def error_chunk(self, message: str, now: float) -> bytes:
        return shapes.sse(shapes.openai_error(500, message))


@frozen
class OpenAICompletion:
    cid: str
    model: str
    plan: Plan
    include_usage: bool
    stream_type: bytes = SSE_TYPE

    def chunk(self, piece: Piece, now: float) -> bytes:
        if piece.kind != "content":
            return b""
        body = shapes.text_completion(self.cid, self.model, now, piece.text, None, None)
        return shapes.sse(body)

    def final(self, stats: shapes.Stats, now: float) -> bytes:
        finish = shapes.finish_reason(self.plan)
        end = shapes.sse(shapes.text_completion(self.cid, self.model, now, "", finish, None))
        if self.include_usage:
            end += shapes.sse(
                shapes.usage_chunk("text_completion", self.cid, self.model, now, self.plan)
            )
        return end + shapes.SSE_DONE

    def whole(self, stats: shapes.Stats, now: float) -> dict[str, Any]:
        finish = shapes.finish_reason(self.plan)
        return shapes.text_completion(self.cid, self.model, now, self.plan.text, finish, self.plan)

    def error_chunk(self, message: str, now: float) -> bytes:
        return shapes.sse(shapes.openai_error(500, message))
