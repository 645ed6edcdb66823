"""Garbage connections against a server on loopback, run as its own process by test_survival.py
(so the flood does not share the GIL with the test's XMPP clients).

    python garbage_flood.py HOST PORT[,PORT...] COUNT --sources 127.0.0.1,127.0.1.1-127.0.1.100
        [--concurrency 200] [--max-seconds 30]

Each connection: open (from the next source address, round robin), send one kind of junk, and
either close at once or read until the server closes (up to 2 s). Prints one JSON line:
{"attempted", "connected", "answered", "refused", "elapsed", "per_second"}. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import socket
import time

JUNK = [
    lambda: os.urandom(random.randint(1, 2048)),
    lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a ClientHello start
    lambda: b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>" + os.urandom(32),
    lambda: b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><message><body>\xff\xfe</body>",
    lambda: b"<" * 5000,
    lambda: b"",  # connect and close
]


def parse_sources(text: str) -> list[str]:
    sources: list[str] = []
    for part in text.split(","):
        if "-" in part:
            first, last = (ipaddress.IPv4Address(p) for p in part.split("-"))
            assert first.is_loopback and last.is_loopback, "loopback addresses only"
            sources += [str(ipaddress.IPv4Address(a)) for a in range(int(first), int(last) + 1)]
        else:
            assert ipaddress.ip_address(part).is_loopback, "loopback addresses only"
            sources.append(part)
    return sources


async def one(host: str, port: int, source: str, stats: dict) -> None:
    stats["attempted"] += 1
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), 5)
    except (OSError, asyncio.TimeoutError):
        stats["failed"] += 1
        return
    stats["connected"] += 1
    try:
        writer.write(random.choice(JUNK)())
        await writer.drain()
        if random.random() < 0.5:
            # Wait for the server's answer (a stream error, a TLS alert) or its close.
            data = await asyncio.wait_for(reader.read(65536), 2)
            if data:
                stats["answered"] += 1
            else:
                stats["closed_silently"] += 1  # refused at accept: closed without a byte
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        stats["reset"] += 1
    finally:
        writer.transport.abort()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("ports")
    parser.add_argument("count", type=int)
    parser.add_argument("--sources", default="127.0.0.1")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=30)
    args = parser.parse_args()
    assert ipaddress.ip_address(args.host).is_loopback, "loopback targets only"
    ports = [int(p) for p in args.ports.split(",")]
    sources = parse_sources(args.sources)
    stats = dict(attempted=0, connected=0, answered=0, closed_silently=0, reset=0, failed=0)
    started = time.monotonic()
    deadline = started + args.max_seconds
    queue = iter(range(args.count))

    async def worker() -> None:
        for i in queue:
            if time.monotonic() > deadline:
                return
            await one(args.host, ports[i % len(ports)], sources[i % len(sources)], stats)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    stats["elapsed"] = round(elapsed, 2)
    stats["per_second"] = round(stats["attempted"] / elapsed, 1)
    print(json.dumps(stats))


if __name__ == "__main__":
    socket.setdefaulttimeout(5)
    asyncio.run(main())
