"""How much CPU the gateway's usage extraction costs, per dialect, on the recorded upstream corpus.

    python -m bench.usage_extract                 # every streamed / blocking fixture, per dialect
    python -m bench.usage_extract --repeat 9 --rounds 50

Streams are fed one SSE event per ``feed`` (as the proxy sees them, one read per event); each figure is the
best of ``--repeat`` runs of ``--rounds`` passes over every fixture of that dialect, in CPU time
(``time.process_time``), so a noisy shared machine inflates it less than wall time. Also: a chat stream whose
usage chunk the relay hides (framing, hiding and metering, one read per event and one per stream), the cost of
one skipped text delta (the commonest event by far), blocking-body extraction, and request parsing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from aigw_common.llm import Endpoint
from aigw_gateway.usage.chat import UsageChunkFilter
from aigw_gateway.usage.dialects import DIALECTS
from aigw_testing.txtar import all_corpora


def endpoint_of(name: str) -> Endpoint | None:
    if name.startswith("anthropic/"):
        return "messages"
    if name.startswith("openai/chatcompletions/"):
        return "chat_completions"
    if name.startswith("openai/responses/"):
        return "responses"
    return None


def _best(fn: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()

    streams: dict[Endpoint, list[list[bytes]]] = {}
    bodies: dict[Endpoint, list[bytes]] = {}
    requests: dict[Endpoint, list[bytes]] = {}
    for name, f in all_corpora().items():
        ep = endpoint_of(name.removeprefix("ext:"))
        if ep is None or "fallthrough" in name:
            continue
        if f.request:
            requests.setdefault(ep, []).append(f.request)
        for section in f.sections:
            if section == "request":
                continue
            r = f.response(section)
            if section.startswith("streaming"):
                if r.status == 200:
                    streams.setdefault(ep, []).append([c + b"\n\n" for c in r.body.split(b"\n\n") if c.strip()])
            else:
                bodies.setdefault(ep, []).append(r.body)

    rounds = args.rounds
    print(f"{'dialect':17s} {'streams':>7s} {'events':>7s} {'µs/event':>9s} {'µs/stream':>10s} "
          f"{'µs/blocking':>12s} {'µs/request':>11s}")
    for ep, dialect in DIALECTS.items():
        chunks_per = streams.get(ep, [])
        n_events = sum(len(c) for c in chunks_per)

        def run_streams(dialect: object = dialect, chunks_per: list[list[bytes]] = chunks_per) -> None:
            stream = dialect.stream  # type: ignore[attr-defined]
            for _ in range(rounds):
                for chunks in chunks_per:
                    x = stream()
                    for c in chunks:
                        x.feed(c)
                    x.finish()

        def run_blocking(dialect: object = dialect, bs: list[bytes] = bodies.get(ep, [])) -> None:
            extract = dialect.extract_blocking  # type: ignore[attr-defined]
            for _ in range(rounds):
                for b in bs:
                    extract(b)

        def run_requests(dialect: object = dialect, rs: list[bytes] = requests.get(ep, [])) -> None:
            parse = dialect.parse_request  # type: ignore[attr-defined]
            for _ in range(rounds):
                for r in rs:
                    parse(r)

        s = _best(run_streams, args.repeat) / rounds
        b = _best(run_blocking, args.repeat) / rounds
        q = _best(run_requests, args.repeat) / rounds
        nb, nq = len(bodies.get(ep, [])) or 1, len(requests.get(ep, [])) or 1
        print(f"{ep:17s} {len(chunks_per):7d} {n_events:7d} {s * 1e6 / max(n_events, 1):9.2f} "
              f"{s * 1e6 / max(len(chunks_per), 1):10.1f} {b * 1e6 / nb:12.1f} {q * 1e6 / nq:11.1f}")

    # a chat stream whose client did not ask for usage: the relay hides the usage chunk and meters what it frames
    chat_streams = streams.get("chat_completions", [])
    n_chat = sum(len(c) for c in chat_streams)
    for how, per in (("one read per event", chat_streams), ("one read per stream", [[b"".join(c)] for c in chat_streams])):

        def run_hidden(per: list[list[bytes]] = per) -> None:
            dialect = DIALECTS["chat_completions"]
            for _ in range(rounds):
                for chunks in per:
                    x = dialect.stream()
                    relay = UsageChunkFilter()
                    read = relay.metering(x)
                    for c in chunks:
                        relay.feed(c)
                        read(c)
                    relay.finish()
                    x.finish()

        s = _best(run_hidden, args.repeat) / rounds
        print(f"chat, usage hidden ({how}): {s * 1e6 / max(n_chat, 1):.2f} µs/event, "
              f"{s * 1e6 / max(len(chat_streams), 1):.1f} µs/stream")

    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
             b'"delta":{"type":"text_delta","text":"hello there"}}\n\n')
    chat = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    for ep, ev in (("messages", delta), ("chat_completions", chat)):
        x = DIALECTS[ep].stream()  # type: ignore[index]
        x.feed(ev)
        n = 200_000

        def run_delta(x: object = x, ev: bytes = ev, n: int = n) -> None:
            feed = x.feed  # type: ignore[attr-defined]
            for _ in range(n):
                feed(ev)

        print(f"skipped {ep} text delta: {_best(run_delta, 3) / n * 1e9:.0f} ns/event")


if __name__ == "__main__":
    main()
