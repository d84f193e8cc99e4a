"""Route classification (pure): which requests are queued, relayed at once, answered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.core.routeclass import (
    INFERENCE_ROUTES,
    NON_STREAMING_INFERENCE,
    RouteClass,
    classify,
    wants_stream,
)
from tests.budget import examples

INFERENCE = RouteClass.INFERENCE
METADATA = RouteClass.METADATA
MANAGEMENT = RouteClass.MANAGEMENT
OTHER = RouteClass.OTHER


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        (b"GET", b"/", RouteClass.ROOT),
        (b"HEAD", b"/", RouteClass.ROOT),
        (b"POST", b"/", OTHER),
        (b"POST", b"/api/chat", INFERENCE),
        (b"POST", b"/api/generate", INFERENCE),
        (b"POST", b"/api/embed", INFERENCE),
        (b"POST", b"/api/embeddings", INFERENCE),
        (b"POST", b"/v1/chat/completions", INFERENCE),
        (b"POST", b"/v1/completions", INFERENCE),
        (b"POST", b"/v1/embeddings", INFERENCE),
        (b"POST", b"/v1/responses", INFERENCE),
        (b"POST", b"/v1/messages", INFERENCE),
        (b"GET", b"/api/chat", OTHER),  # the target answers 405 itself
        (b"GET", b"/api/tags", METADATA),
        (b"HEAD", b"/api/tags", METADATA),
        (b"GET", b"/api/ps", METADATA),
        (b"GET", b"/api/version", METADATA),
        (b"HEAD", b"/api/version", METADATA),
        (b"POST", b"/api/show", METADATA),
        (b"GET", b"/v1/models", METADATA),
        (b"GET", b"/v1/models/llama3.2:latest", METADATA),
        (b"POST", b"/api/pull", MANAGEMENT),
        (b"POST", b"/api/push", MANAGEMENT),
        (b"POST", b"/api/create", MANAGEMENT),
        (b"POST", b"/api/copy", MANAGEMENT),
        (b"DELETE", b"/api/delete", MANAGEMENT),
        (b"HEAD", b"/api/blobs/sha256:abc", MANAGEMENT),
        (b"POST", b"/api/blobs/sha256:abc", MANAGEMENT),
        (b"GET", b"/api/status", OTHER),
        (b"POST", b"/api/experimental/thing", OTHER),
        (b"GET", b"/favicon.ico", OTHER),
    ],
)
def test_spec_table(method: bytes, path: bytes, kind: RouteClass) -> None:
    assert classify(method, path) is kind


@given(
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]),
    path=st.one_of(
        st.sampled_from(sorted(INFERENCE_ROUTES)),
        st.binary(max_size=40).map(lambda b: b"/" + b),
    ),
)
@settings(deadline=None, max_examples=examples(300))
def test_only_post_to_inference_routes_is_queued(method: bytes, path: bytes) -> None:
    kind = classify(method, path)
    assert (kind is INFERENCE) == (method == b"POST" and path in INFERENCE_ROUTES)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (b"/api/chat", {}, True),
        (b"/api/chat", {"stream": True}, True),
        (b"/api/chat", {"stream": False}, False),
        (b"/api/generate", {"stream": None}, True),
        (b"/v1/chat/completions", {}, False),
        (b"/v1/chat/completions", {"stream": True}, True),
        (b"/v1/responses", {"stream": False}, False),
        (b"/api/embed", {"stream": True}, False),
        (b"/v1/embeddings", {"stream": True}, False),
    ],
)
def test_stream_defaults_follow_ollama(
    path: bytes, body: dict[str, object], expected: bool
) -> None:
    assert wants_stream(path, body) is expected


def test_embedding_routes_are_inference_routes() -> None:
    assert NON_STREAMING_INFERENCE <= INFERENCE_ROUTES
