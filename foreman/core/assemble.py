"""Assemble the non-streaming response from a job's stream chunks (pure).

The worker always streams from the target (to record progress); the job's
``response.json`` and ``result`` must nevertheless equal what the same request
with ``stream: false`` returns. Each endpoint family is rebuilt the way Ollama
builds its own non-streaming answer:

* ``/api/chat``, ``/api/generate``: Ollama's non-streaming handler keeps the
  LAST chunk and replaces the streamed fields with their concatenation
  (``message.content``/``message.thinking`` or ``response``/``thinking``),
  the tool calls of all chunks and the logprobs of all chunks. We do the same,
  so every final-chunk field (durations, counts, ``done_reason``, ``context``,
  fields added by newer Ollama versions) is carried over untouched. Empty
  ``thinking``/``tool_calls``/``logprobs`` are omitted, as Ollama omits them.
* ``/v1/chat/completions``, ``/v1/completions``: a ``chat.completion`` /
  ``text_completion`` object; deltas concatenated per choice, tool calls
  merged by ``index`` (``function.arguments`` concatenated). ``usage`` only
  appears if the stream carried it: the worker should send
  ``stream_options: {"include_usage": true}`` to get it.
* ``/v1/messages`` (Anthropic): the ``message`` of ``message_start`` with the
  content blocks rebuilt from their deltas and ``message_delta`` applied.
* ``/v1/responses``: the ``response`` carried by ``response.completed``
  (or ``.incomplete``/``.failed``).
* Anything else (``/api/embed``, ``/api/embeddings``, ``/v1/embeddings``,
  unknown routes): not a stream, the single body is the result.

``result()`` shares nested objects with the chunks fed (no deep copy): the
caller serialises it right away.
"""

from __future__ import annotations

import json
from typing import Any

JSONDict = dict[str, Any]

NATIVE_CHAT = "/api/chat"
NATIVE_GENERATE = "/api/generate"
OPENAI_CHAT = "/v1/chat/completions"
OPENAI_COMPLETIONS = "/v1/completions"
ANTHROPIC_MESSAGES = "/v1/messages"
OPENAI_RESPONSES = "/v1/responses"
STREAMING_ENDPOINTS = frozenset(
    {
        NATIVE_CHAT,
        NATIVE_GENERATE,
        OPENAI_CHAT,
        OPENAI_COMPLETIONS,
        ANTHROPIC_MESSAGES,
        OPENAI_RESPONSES,
    }
)
DONE_MARKER = "[DONE]"


def error_text(value: Any) -> str:
    """The message of an ``error`` value: Ollama's string or an OpenAI/Anthropic object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return str(value["message"])
    return json.dumps(value, sort_keys=True)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class Assembler:
    """Feed one decoded chunk at a time; ask for :meth:`result` at the end.

    ``tokens``: progress, the number of chunks that carried generated text
    (content, thinking, response, deltas); Ollama sends about one per token.
    ``error``: the message of an error object seen inside the stream (the job
    then fails with ``stream_error``).
    ``complete``: the stream's own end marker was seen (``done: true``,
    a ``finish_reason``, ``[DONE]``, ``message_stop``, ``response.completed``,
    or the single body); a stream that closes before that was cut short.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/") or endpoint
        self.tokens = 0
        self.error: str | None = None
        self.complete = False
        self.chunks = 0
        self._last: JSONDict | None = None
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[Any] = []
        self._logprobs: list[Any] = []
        self._top: JSONDict = {}
        self._usage: Any = None
        self._choices: dict[int, _Choice] = {}
        self._message: JSONDict | None = None
        self._blocks: dict[int, _Block] = {}
        self._response: JSONDict | None = None

    # ------------------------------------------------------------------ feeding

    def feed_chunk(self, obj: JSONDict | str) -> None:
        """One NDJSON object, or one SSE ``data`` parsed as JSON (``"[DONE]"`` as a str)."""
        if isinstance(obj, str):
            if obj.strip() == DONE_MARKER:
                self.complete = True
                return
            raise ValueError(f"unexpected non-JSON chunk {obj[:40]!r}")
        self.chunks += 1
        if obj.get("error") is not None:  # Ollama {"error": "..."}, OpenAI/Anthropic objects
            self.error = error_text(obj["error"])
            return
        endpoint = self.endpoint
        if endpoint == NATIVE_CHAT:
            self._feed_native(obj, obj.get("message"), "content")
        elif endpoint == NATIVE_GENERATE:
            self._feed_native(obj, obj, "response")
        elif endpoint in (OPENAI_CHAT, OPENAI_COMPLETIONS):
            self._feed_openai(obj)
        elif endpoint == ANTHROPIC_MESSAGES:
            self._feed_anthropic(obj)
        elif endpoint == OPENAI_RESPONSES:
            self._feed_responses(obj)
        else:
            self._last = obj
            self.complete = True

    def _feed_native(self, chunk: JSONDict, holder: Any, text_key: str) -> None:
        if isinstance(holder, dict):
            content, thinking = _text(holder.get(text_key)), _text(holder.get("thinking"))
            self._content.append(content)
            self._thinking.append(thinking)
            if content or thinking:
                self.tokens += 1
            calls = holder.get("tool_calls")
            if isinstance(calls, list):
                self._tool_calls.extend(calls)
        logprobs = chunk.get("logprobs")
        if isinstance(logprobs, list):
            self._logprobs.extend(logprobs)
        self._last = chunk
        if chunk.get("done") is True:
            self.complete = True

    def _feed_openai(self, chunk: JSONDict) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk:
                self._top[key] = chunk[key]
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for raw in choices:
            if not isinstance(raw, dict):
                continue
            index = raw.get("index", 0)
            choice = self._choices.get(index)
            if choice is None:
                choice = self._choices[index] = _Choice(index)
            if choice.feed(raw):
                self.tokens += 1
            if raw.get("finish_reason") is not None:
                self.complete = True

    def _feed_anthropic(self, event: JSONDict) -> None:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self._message = dict(event["message"])
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            self._blocks[event.get("index", len(self._blocks))] = _Block(event["content_block"])
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            block = self._blocks.get(event.get("index", 0))
            if block is None:
                block = self._blocks[event.get("index", 0)] = _Block({"type": "text", "text": ""})
            if block.feed(event["delta"]):
                self.tokens += 1
        elif kind == "message_delta":
            if self._message is None:
                self._message = {}
            delta = event.get("delta")
            if isinstance(delta, dict):
                self._message.update(delta)
            usage = event.get("usage")
            if isinstance(usage, dict):
                merged = dict(self._message.get("usage") or {})
                merged.update(usage)
                self._message["usage"] = merged
        elif kind == "message_stop":
            self.complete = True

    def _feed_responses(self, event: JSONDict) -> None:
        kind = _text(event.get("type"))
        response = event.get("response")
        if isinstance(response, dict):
            self._response = response
        if kind.endswith(".delta") and _text(event.get("delta")):
            self.tokens += 1
        if kind == "error":  # {"type": "error", "code": ..., "message": ...}
            self.error = error_text(event.get("message") or event)
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.complete = True
            if kind == "response.failed" and isinstance(response, dict):
                self.error = error_text(response.get("error") or "response failed")

    # ------------------------------------------------------------------- result

    def result(self) -> JSONDict:
        """The response ``stream: false`` would have given (so far, if incomplete)."""
        endpoint = self.endpoint
        if endpoint in (NATIVE_CHAT, NATIVE_GENERATE):
            return self._native_result(endpoint == NATIVE_CHAT)
        if endpoint == OPENAI_CHAT:
            return self._openai_result("chat.completion", chat=True)
        if endpoint == OPENAI_COMPLETIONS:
            return self._openai_result("text_completion", chat=False)
        if endpoint == ANTHROPIC_MESSAGES:
            return self._anthropic_result()
        if endpoint == OPENAI_RESPONSES:
            return dict(self._response or {})
        return dict(self._last or {})

    def _native_result(self, chat: bool) -> JSONDict:
        if self._last is None:
            return {}
        out = dict(self._last)
        if chat:
            holder = dict(out.get("message") or {})
            holder.setdefault("role", "assistant")
            text_key = "content"
        else:
            holder = out
            text_key = "response"
        holder[text_key] = "".join(self._content)
        _set_or_drop(holder, "thinking", "".join(self._thinking))
        _set_or_drop(holder, "tool_calls", self._tool_calls)
        if chat:
            out["message"] = holder
        _set_or_drop(out, "logprobs", self._logprobs)
        return out

    def _openai_result(self, obj: str, chat: bool) -> JSONDict:
        out: JSONDict = {
            "id": self._top.get("id", ""),
            "object": obj,
            "created": self._top.get("created", 0),
            "model": self._top.get("model", ""),
            "system_fingerprint": self._top.get("system_fingerprint", ""),
            "choices": [
                self._choices[i].result(chat) for i in sorted(self._choices, key=_sort_index)
            ],
        }
        if self._usage is not None:
            out["usage"] = self._usage
        return out

    def _anthropic_result(self) -> JSONDict:
        out = dict(self._message or {})
        out["content"] = [self._blocks[i].result() for i in sorted(self._blocks, key=_sort_index)]
        return out


def _sort_index(value: Any) -> tuple[int, str]:
    return (value, "") if isinstance(value, int) else (1 << 62, str(value))


def _set_or_drop(target: JSONDict, key: str, value: str | list[Any]) -> None:
    if value:
        target[key] = value
    else:
        target.pop(key, None)


class _Choice:
    """One OpenAI choice being rebuilt from its deltas."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.role: str | None = None
        self.text: list[str] = []
        self.reasoning: dict[str, list[str]] = {}  # "reasoning" (Ollama) / "reasoning_content"
        self.tool_calls: list[JSONDict] = []
        self._call_at: dict[Any, JSONDict] = {}
        self.finish_reason: Any = None
        self.logprobs: list[Any] | None = None

    def feed(self, raw: JSONDict) -> bool:
        """Apply one chunk choice; True if it carried generated text."""
        produced = False
        text = raw.get("text")  # /v1/completions
        if isinstance(text, str):
            self.text.append(text)
            produced = produced or bool(text)
        delta = raw.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("role"), str) and delta["role"]:
                self.role = delta["role"]
            content = delta.get("content")
            if isinstance(content, str):
                self.text.append(content)
                produced = produced or bool(content)
            for key in ("reasoning", "reasoning_content"):
                value = delta.get(key)
                if isinstance(value, str):
                    self.reasoning.setdefault(key, []).append(value)
                    produced = produced or bool(value)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        self._merge_tool_call(call)
        if raw.get("finish_reason") is not None:
            self.finish_reason = raw["finish_reason"]
        logprobs = raw.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(logprobs["content"])
        return produced

    def _merge_tool_call(self, call: JSONDict) -> None:
        """Deltas of one call share its ``index``; the first carries id and name.

        A delta whose id or name clashes with the call already at that index
        starts a new call (servers that send whole calls all with index 0).
        """
        index = call.get("index", len(self.tool_calls))
        raw_fn = call.get("function")
        fn: JSONDict = raw_fn if isinstance(raw_fn, dict) else {}
        name, call_id = _text(fn.get("name")), _text(call.get("id"))
        existing = self._call_at.get(index)
        if (
            existing is None
            or (call_id and existing["id"] and call_id != existing["id"])
            or (name and existing["function"]["name"])
        ):
            merged: JSONDict = {
                "id": call_id,
                "index": index,
                "type": call.get("type") or "function",
                "function": {"name": name, "arguments": _text(fn.get("arguments"))},
            }
            self.tool_calls.append(merged)
            self._call_at[index] = merged
            return
        if call_id:
            existing["id"] = call_id
        if call.get("type"):
            existing["type"] = call["type"]
        if name:
            existing["function"]["name"] = name
        existing["function"]["arguments"] += _text(fn.get("arguments"))

    def result(self, chat: bool) -> JSONDict:
        out: JSONDict
        if chat:
            message: JSONDict = {"role": self.role or "assistant", "content": "".join(self.text)}
            for key, parts in self.reasoning.items():
                if "".join(parts):
                    message[key] = "".join(parts)
            if self.tool_calls:
                message["tool_calls"] = self.tool_calls
            out = {"index": self.index, "message": message, "finish_reason": self.finish_reason}
        else:
            out = {"text": "".join(self.text), "index": self.index}
            out["finish_reason"] = self.finish_reason
        if self.logprobs is not None:
            out["logprobs"] = {"content": self.logprobs}
        return out


class _Block:
    """One Anthropic content block being rebuilt from its deltas."""

    def __init__(self, start: JSONDict) -> None:
        self.block = dict(start)
        self.partial_json: list[str] = []

    def feed(self, delta: JSONDict) -> bool:
        kind = delta.get("type")
        if kind == "text_delta":
            self.block["text"] = _text(self.block.get("text")) + _text(delta.get("text"))
            return bool(_text(delta.get("text")))
        if kind == "thinking_delta":
            self.block["thinking"] = _text(self.block.get("thinking")) + _text(
                delta.get("thinking")
            )
            return bool(_text(delta.get("thinking")))
        if kind == "signature_delta":
            self.block["signature"] = _text(self.block.get("signature")) + _text(
                delta.get("signature")
            )
        elif kind == "input_json_delta":
            self.partial_json.append(_text(delta.get("partial_json")))
        elif kind == "citations_delta" and "citation" in delta:
            self.block.setdefault("citations", []).append(delta["citation"])
        return False

    def result(self) -> JSONDict:
        out = dict(self.block)
        raw = "".join(self.partial_json)
        if raw:
            try:
                out["input"] = json.loads(raw)
            except ValueError:
                out["input"] = raw  # keep what came rather than lose it
        return out
