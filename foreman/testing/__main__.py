"""Run the Ollama simulator alone: ``python -m foreman.testing --listen tcp:11434``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from foreman.testing import DEFAULT_MODELS, DEFAULT_PULLABLE, make_simulator


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be from 0 to 1")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m foreman.testing",
        description="Serve a simulated Ollama API (native /api and OpenAI-compatible /v1).",
    )
    parser.add_argument(
        "--listen", default="tcp:11434:interface=127.0.0.1", help="Twisted endpoint string"
    )
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names"
    )
    parser.add_argument(
        "--pullable",
        default=",".join(DEFAULT_PULLABLE),
        help="comma-separated names /api/pull can fetch",
    )
    parser.add_argument("--token-rate", type=float, default=20.0, help="tokens per second")
    parser.add_argument("--load-time", type=float, default=0.5, help="model load seconds")
    parser.add_argument("--reply-tokens", type=int, default=24, help="tokens per reply")
    parser.add_argument(
        "--max-loaded",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="models resident at once (OLLAMA_MAX_LOADED_MODELS)",
    )
    parser.add_argument(
        "--vram-fraction",
        type=_fraction,
        default=1.0,
        metavar="F",
        help="share of each loaded model in VRAM (below 0.9: runs partly on the CPU)",
    )
    parser.add_argument("--token", default=None, help="require this Bearer token")
    return parser.parse_args(argv)


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    sim = make_simulator(
        _names(args.models),
        token_rate=args.token_rate,
        load_time=args.load_time,
        token=args.token,
        pullable=_names(args.pullable),
        reply_tokens=args.reply_tokens,
        reactor=reactor,
        max_loaded=args.max_loaded,
        vram_fraction=args.vram_fraction,
    )
    await sim.listen(args.listen)
    print(sim.url, flush=True)
    stopped: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: sim.close())
    await stopped


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    react(lambda reactor: Deferred.fromCoroutine(_main(reactor, args)))


if __name__ == "__main__":
    main()
