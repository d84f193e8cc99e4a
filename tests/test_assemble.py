"""Assembler: stream chunks -> the response ``stream: false`` gives (Ollama's real shapes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.assemble import Assembler, error_text
from foreman.core.framing import NDJSONDecoder, SSEDecoder
from tests.budget import examples

T0 = "2025-06-01T10:00:00.000000Z"
T1 = "2025-06-01T10:00:01.500000Z"
FINAL_METRICS = {
    "total_duration": 1_500_000_000,
    "load_duration": 200_000_000,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 130_000_000,
    "eval_count": 3,
    "eval_duration": 1_100_000_000,
}


def feed_all(endpoint: str, chunks: list[Any]) -> Assembler:
    asm = Assembler(endpoint)
    for chunk in chunks:
        asm.feed_chunk(chunk)
    return asm


def chat_chunk(content: str = "", **message: Any) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "created_at": T0,
        "message": {"role": "assistant", "content": content, **message},
        "done": False,
    }


def chat_final(**extra: Any) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "created_at": T1,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        **FINAL_METRICS,
        **extra,
    }


# ------------------------------------------------------------------------ /api/chat


def test_native_chat_plain() -> None:
    import ollama  # on use: the clients take seconds to import

    raw = b"".join(
        json.dumps(c).encode() + b"\n"
        for c in [chat_chunk("The"), chat_chunk(" sky"), chat_chunk(" is blue."), chat_final()]
    )
    dec = NDJSONDecoder()
    asm = Assembler("/api/chat")
    for i in range(0, len(raw), 13):  # as read off a socket
        for obj in dec.feed(raw[i : i + 13]):
            asm.feed_chunk(obj)
    for obj in dec.flush():
        asm.feed_chunk(obj)
    assert asm.complete and asm.error is None and asm.tokens == 3
    assert asm.result() == {
        "model": "llama3.2",
        "created_at": T1,
        "message": {"role": "assistant", "content": "The sky is blue."},
        "done": True,
        "done_reason": "stop",
        **FINAL_METRICS,
    }
    ollama.ChatResponse.model_validate(asm.result())


def test_native_chat_thinking_and_tool_calls_before_final_chunk() -> None:
    import ollama  # on use: the clients take seconds to import

    call = {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}
    call2 = {"id": "call_2", "function": {"index": 1, "name": "get_time", "arguments": {}}}
    chunks = [
        chat_chunk("", thinking="The user wants"),
        chat_chunk("", thinking=" the weather."),
        chat_chunk("", tool_calls=[call]),
        chat_chunk("", tool_calls=[call2]),
        chat_final(),
    ]
    asm = feed_all("/api/chat", chunks)
    assert asm.tokens == 2
    result = asm.result()
    assert result["message"] == {
        "role": "assistant",
        "content": "",
        "thinking": "The user wants the weather.",
        "tool_calls": [call, call2],
    }
    assert result["done_reason"] == "stop" and result["eval_count"] == 3
    parsed = ollama.ChatResponse.model_validate(result)
    assert parsed.message.tool_calls is not None
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Tokyo"}


def test_native_chat_logprobs_accumulate() -> None:
    lp1 = {"token": "Hi", "logprob": -0.1}
    lp2 = {"token": "!", "logprob": -0.2}
    chunks = [chat_chunk("Hi", **{}), chat_chunk("!"), chat_final()]
    chunks[0]["logprobs"] = [lp1]
    chunks[1]["logprobs"] = [lp2]
    result = feed_all("/api/chat", chunks).result()
    assert result["logprobs"] == [lp1, lp2]
    assert "logprobs" not in feed_all("/api/chat", [chat_chunk("x"), chat_final()]).result()


def test_native_chat_error_mid_stream() -> None:
    asm = feed_all(
        "/api/chat",
        [
            chat_chunk("Once"),
            chat_chunk(" upon"),
            {"error": "an error was encountered while running the model"},
        ],
    )
    assert asm.error == "an error was encountered while running the model"
    assert not asm.complete
    assert asm.tokens == 2
    assert asm.result()["message"]["content"] == "Once upon"  # partial, for the record


def test_native_chat_load_only_response() -> None:
    load = {
        "model": "llama3.2",
        "created_at": T0,
        "message": {"role": "assistant", "content": ""},
        "done_reason": "load",
        "done": True,
    }
    asm = feed_all("/api/chat", [load])
    assert asm.complete and asm.tokens == 0
    assert asm.result() == load


def test_empty_stream() -> None:
    asm = Assembler("/api/chat")
    assert asm.result() == {} and not asm.complete and asm.tokens == 0
    assert Assembler("/v1/chat/completions").result()["choices"] == []


# -------------------------------------------------------------------- /api/generate


def test_native_generate_with_context_and_thinking() -> None:
    import ollama  # on use: the clients take seconds to import

    def g(resp: str, thinking: str = "") -> dict[str, Any]:
        c: dict[str, Any] = {"model": "qwen3", "created_at": T0, "response": resp, "done": False}
        if thinking:
            c["thinking"] = thinking
        return c

    final = {
        "model": "qwen3",
        "created_at": T1,
        "response": "",
        "done": True,
        "done_reason": "length",
        "context": [1, 2, 3, 4],
        **FINAL_METRICS,
    }
    asm = feed_all("/api/generate", [g("", "hmm"), g("Why"), g(" not?"), final])
    assert asm.complete and asm.tokens == 3
    assert asm.result() == {**final, "response": "Why not?", "thinking": "hmm"}
    ollama.GenerateResponse.model_validate(asm.result())


# ----------------------------------------------------------------- /v1/chat/completions


def sse_stream(events: list[dict[str, Any] | str]) -> bytes:
    out = []
    for e in events:
        out.append(b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n")
    return b"".join(out)


def decode_sse_json(raw: bytes, step: int = 11) -> list[dict[str, Any] | str]:
    dec = SSEDecoder()
    out: list[dict[str, Any] | str] = []
    for i in range(0, len(raw), step):
        for ev in dec.feed(raw[i : i + step]):
            out.append(ev.data if ev.data == "[DONE]" else json.loads(ev.data))
    return out


def oa_chunk(delta: dict[str, Any], finish: str | None = None, **top: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-431",
        "object": "chat.completion.chunk",
        "created": 1748772000,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **top,
    }


def test_openai_chat_with_usage_and_reasoning() -> None:
    import openai.types.chat  # on use: the clients take seconds to import

    usage = {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29}
    events: list[dict[str, Any] | str] = [
        oa_chunk({"role": "assistant", "content": "", "reasoning": "Think"}),
        oa_chunk({"role": "assistant", "content": "Hello"}),
        oa_chunk({"role": "assistant", "content": " there"}),
        oa_chunk({"role": "assistant", "content": ""}, "stop"),
        {**oa_chunk({}), "choices": [], "usage": usage},
        "[DONE]",
    ]
    asm = feed_all("/v1/chat/completions", decode_sse_json(sse_stream(events)))
    assert asm.complete and asm.tokens == 3 and asm.error is None
    result = asm.result()
    assert result == {
        "id": "chatcmpl-431",
        "object": "chat.completion",
        "created": 1748772000,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there", "reasoning": "Think"},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    openai.types.chat.ChatCompletion.model_validate(result)


def test_openai_chat_tool_calls_merged_by_index() -> None:
    import openai.types.chat  # on use: the clients take seconds to import

    # OpenAI style: id+name first, arguments in pieces; a second call interleaved
    events: list[dict[str, Any] | str] = [
        oa_chunk({"role": "assistant", "content": None}),
        oa_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        oa_chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            }
        ),
        oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        oa_chunk({}, "tool_calls"),
        "[DONE]",
    ]
    result = feed_all("/v1/chat/completions", events).result()
    message = result["choices"][0]["message"]
    assert message["content"] == ""
    assert message["tool_calls"] == [
        {
            "id": "call_a",
            "index": 0,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_b",
            "index": 1,
            "type": "function",
            "function": {"name": "get_time", "arguments": "{}"},
        },
    ]
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in result  # no include_usage: none came
    openai.types.chat.ChatCompletion.model_validate(result)


def test_openai_chat_whole_tool_calls_with_same_index_stay_separate() -> None:
    # Ollama sends each call whole; some versions give every call index 0
    def whole(name: str, call_id: str) -> dict[str, Any]:
        return {
            "id": call_id,
            "index": 0,
            "type": "function",
            "function": {"name": name, "arguments": "{}"},
        }

    events: list[dict[str, Any] | str] = [
        oa_chunk({"role": "assistant", "content": "", "tool_calls": [whole("a", "call_1")]}),
        oa_chunk({"role": "assistant", "content": "", "tool_calls": [whole("b", "call_2")]}),
        oa_chunk({"role": "assistant", "content": ""}, "tool_calls"),
    ]
    calls = feed_all("/v1/chat/completions", events).result()["choices"][0]["message"]
    assert [c["function"]["name"] for c in calls["tool_calls"]] == ["a", "b"]


def test_openai_chat_logprobs_and_error() -> None:
    lp = [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]
    first = oa_chunk({"role": "assistant", "content": "Hi"})
    first["choices"][0]["logprobs"] = {"content": lp}
    events: list[dict[str, Any] | str] = [first]
    events.append({"error": {"message": "model runner crashed", "type": "api_error"}})
    asm = feed_all("/v1/chat/completions", events)
    assert asm.error == "model runner crashed" and not asm.complete
    assert asm.result()["choices"][0]["logprobs"] == {"content": lp}


def test_done_marker_and_garbage_strings() -> None:
    asm = Assembler("/v1/completions")
    asm.feed_chunk("[DONE]")
    assert asm.complete
    with pytest.raises(ValueError):
        asm.feed_chunk("not json")


# -------------------------------------------------------------------- /v1/completions


def test_openai_completions() -> None:
    import openai.types  # on use: the clients take seconds to import

    def c(text: str, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": "cmpl-12",
            "object": "text_completion",
            "created": 1748772000,
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
            "model": "llama3.2",
            "system_fingerprint": "fp_ollama",
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    real = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    final_usage = {**c("", usage=real), "choices": []}
    events = [c("Once", usage=zero), c(" upon", usage=zero), c("", "length", zero), final_usage]
    asm = feed_all("/v1/completions", [*events, "[DONE]"])
    result = asm.result()
    assert result == {
        "id": "cmpl-12",
        "object": "text_completion",
        "created": 1748772000,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": "Once upon", "index": 0, "finish_reason": "length"}],
        "usage": real,
    }
    assert asm.tokens == 2
    openai.types.Completion.model_validate(result)


# ------------------------------------------------------------------------ /v1/messages


def test_anthropic_messages() -> None:
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "qwen3",
                "content": [],
                "usage": {"input_tokens": 12, "output_tokens": 0},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Let me"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": " see."},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "Checking"},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ' "Oslo"}'},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    asm = feed_all("/v1/messages", events)
    assert asm.complete and asm.tokens == 3
    assert asm.result() == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "qwen3",
        "content": [
            {"type": "thinking", "thinking": "Let me see."},
            {"type": "text", "text": "Checking"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 12, "output_tokens": 9},
    }
    err = feed_all(
        "/v1/messages",
        [{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}],
    )
    assert err.error == "Overloaded"


# ----------------------------------------------------------------------- /v1/responses


def test_openai_responses() -> None:
    created = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
    done = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi!"}]}],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }
    events = [
        {"type": "response.created", "response": created},
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hi"},
        {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "!"},
        {"type": "response.completed", "response": done},
    ]
    asm = feed_all("/v1/responses", events)
    assert asm.complete and asm.tokens == 2 and asm.result() == done
    failed = feed_all(
        "/v1/responses",
        [
            {
                "type": "response.failed",
                "response": {"status": "failed", "error": {"message": "boom"}},
            }
        ],
    )
    assert failed.error == "boom"
    err = feed_all("/v1/responses", [{"type": "error", "code": "x", "message": "bad"}])
    assert err.error == "bad"


# ------------------------------------------------------------------ non-streaming ones


@pytest.mark.parametrize(
    "endpoint", ["/api/embed", "/api/embeddings", "/v1/embeddings", "/api/new"]
)
def test_single_body_endpoints(endpoint: str) -> None:
    body = {"model": "all-minilm", "embeddings": [[0.1, 0.2]], "prompt_eval_count": 2}
    asm = feed_all(endpoint, [body])
    assert asm.complete and asm.result() == body and asm.tokens == 0
    assert feed_all(endpoint, [{"error": "model not found"}]).error == "model not found"


def test_error_text() -> None:
    assert error_text("x") == "x"
    assert error_text({"message": "m", "type": "t"}) == "m"
    assert error_text({"code": 5}) == '{"code": 5}'


# ------------------------------------------------------------------------- properties

pieces = st.lists(st.text(max_size=6), max_size=20)


@given(content=pieces, thinking=pieces)
@settings(max_examples=examples(200), deadline=None)
def test_native_chat_concatenation_and_idempotence(content: list[str], thinking: list[str]) -> None:
    chunks = [chat_chunk(c) for c in content] + [chat_chunk("", thinking=t) for t in thinking]
    asm = feed_all("/api/chat", [*chunks, chat_final()])
    result = asm.result()
    assert result["message"]["content"] == "".join(content)
    assert result["message"].get("thinking", "") == "".join(thinking)
    assert asm.tokens == sum(1 for c in content if c) + sum(1 for t in thinking if t)
    # a non-streaming answer fed as the only chunk assembles to itself
    assert feed_all("/api/chat", [result]).result() == result


@given(content=pieces, args=pieces)
@settings(max_examples=examples(200), deadline=None)
def test_openai_chat_concatenation(content: list[str], args: list[str]) -> None:
    events: list[dict[str, Any] | str] = [
        oa_chunk({"role": "assistant", "content": c}) for c in content
    ]
    events.append(
        oa_chunk(
            {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}
        )
    )
    events += [oa_chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in args]
    events += [oa_chunk({}, "stop"), "[DONE]"]
    message = feed_all("/v1/chat/completions", events).result()["choices"][0]["message"]
    assert message["content"] == "".join(content)
    assert message["tool_calls"][0]["function"]["arguments"] == "".join(args)
