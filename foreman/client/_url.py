"""The one rule for a base URL, applied wherever one enters the client (pure).

People type ``localhost:8080``; the SPEC says a URL without a scheme means
``http://``. Anything still unusable is refused with InvalidURL up front:
left to the transport it surfaces at the first request as a long Twisted
traceback (``SchemeNotSupported``) that does not name the setting.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from foreman.client._errors import InvalidURL

__all__ = ["base_url"]

_HAS_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# "http:/x", "http:x": a scheme with its slashes mistyped (host:port has digits after ":")
_BROKEN_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?![0-9])")
_SCHEMES = ("http", "https")


def base_url(url: str) -> str:
    """``url`` as ``http(s)://host[:port][/prefix]`` (no trailing slash), or InvalidURL."""
    text = url.strip()  # a pasted value or an env file often ends in a newline
    if not text:
        raise InvalidURL(url, "it is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise InvalidURL(url, "it contains a space or a control character")
    if not _HAS_SCHEME.match(text):
        if _BROKEN_SCHEME.match(text):
            raise InvalidURL(url, "expected http://host:port, https://host:port or host:port")
        text = "http://" + text
    try:
        parts = urlsplit(text)
        _ = parts.port  # parsing it is the check: a ValueError if it is not a port
    except ValueError as e:
        raise InvalidURL(url, f"bad port or host: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidURL(url, f"{scheme}:// is not supported; use http://, https:// or host:port")
    if not parts.hostname:
        raise InvalidURL(url, "it names no host")
    if parts.netloc.endswith(":"):
        raise InvalidURL(url, "bad port or host: the port is empty")
    if parts.username is not None or parts.password is not None:
        raise InvalidURL(url, "credentials do not belong in the URL; pass a token")
    if parts.query or parts.fragment:
        raise InvalidURL(url, "a base URL takes no ?query or #fragment")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
