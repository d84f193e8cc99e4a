"""Which kind of Ollama/OpenAI route a request is: pure, no I/O.

The proxy treats requests differently by kind (SPEC "HTTP surface"):
inference requests go through admission (the queue), metadata and
management requests are relayed at once, ``/`` is answered by foreman, and
anything else is relayed unchanged. Keeping the table here, as data, makes
it easy to extend when Ollama adds routes.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = [
    "INFERENCE_ROUTES",
    "NON_STREAMING_INFERENCE",
    "STALE_OK",
    "RouteClass",
    "classify",
    "wants_stream",
]


class RouteClass(Enum):
    ROOT = "root"
    INFERENCE = "inference"
    METADATA = "metadata"
    MANAGEMENT = "management"
    OTHER = "other"


#: POST routes that run the model: queued, one at a time.
INFERENCE_ROUTES: frozenset[bytes] = frozenset(
    {
        b"/api/chat",
        b"/api/generate",
        b"/api/embed",
        b"/api/embeddings",
        b"/v1/chat/completions",
        b"/v1/completions",
        b"/v1/embeddings",
        b"/v1/responses",
        b"/v1/messages",
    }
)

#: Inference routes whose answer is never a stream, whatever the body says.
NON_STREAMING_INFERENCE: frozenset[bytes] = frozenset(
    {b"/api/embed", b"/api/embeddings", b"/v1/embeddings"}
)

_METADATA_READ: frozenset[bytes] = frozenset({b"/api/tags", b"/api/ps", b"/api/version"})
_MANAGEMENT: frozenset[bytes] = frozenset(
    {b"/api/pull", b"/api/push", b"/api/create", b"/api/copy", b"/api/delete"}
)

#: Metadata a client may get from foreman's last good copy while the target is down.
STALE_OK: frozenset[bytes] = frozenset({b"/api/tags", b"/api/version"})


def classify(method: bytes, path: bytes) -> RouteClass:
    """The kind of route; ``path`` is the request path without the query string."""
    if path == b"/":
        return RouteClass.ROOT if method in (b"GET", b"HEAD") else RouteClass.OTHER
    if method == b"POST":
        if path in INFERENCE_ROUTES:
            return RouteClass.INFERENCE
        if path == b"/api/show":
            return RouteClass.METADATA
    elif method in (b"GET", b"HEAD") and (
        path in _METADATA_READ or path == b"/v1/models" or path.startswith(b"/v1/models/")
    ):
        return RouteClass.METADATA
    if path in _MANAGEMENT or path.startswith(b"/api/blobs/"):
        return RouteClass.MANAGEMENT
    return RouteClass.OTHER


def wants_stream(path: bytes, body: dict[str, Any]) -> bool:
    """Whether the target will stream its answer, by Ollama's own defaults.

    Native routes stream unless ``"stream": false``; ``/v1`` routes stream only
    with ``"stream": true``; embeddings never stream.
    """
    if path in NON_STREAMING_INFERENCE:
        return False
    stream = body.get("stream")
    if path.startswith(b"/v1/"):
        return stream is True
    return stream is not False
