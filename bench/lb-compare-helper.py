#!/usr/bin/env python3
"""Helpers for bench/lb-compare.sh (standard library only).

  hold HOST PORT N HOLD_SECONDS
      Opens N TCP connections to HOST:PORT (at most 100 connecting at once), sends one keep-alive
      `GET / HTTP/1.1` on each, reads the whole response, and keeps every socket open. Prints
      `ready ok=.. failed=.. non200=..` once all are done, waits 2 s, prints `open=K` (connections
      the server has not closed), then sleeps HOLD_SECONDS (the caller kills it earlier).

  hist BEFORE AFTER METRIC
      Reads two Prometheus text expositions, subtracts BEFORE from AFTER for METRIC's buckets (summed
      over every label set but `le`), and prints the per-bucket counts of the interval plus p50, p90,
      p99 and p99.9 estimated by linear interpolation inside the bucket (as histogram_quantile does).
"""

import asyncio
import math
import re
import sys


async def _read_response(reader):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        await asyncio.wait_for(reader.readexactly(length), 10)
    elif chunked:
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
            size = int(size_line.split(b";")[0].strip(), 16)
            await asyncio.wait_for(reader.readexactly(size + 2), 10)
            if size == 0:
                break
    return status


async def _hold(host, port, n, hold):
    sem = asyncio.Semaphore(100)
    conns = []
    failed = 0
    non200 = 0

    async def one():
        nonlocal failed, non200
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: lb-compare-hold\r\n\r\n")
                await writer.drain()
                status = await _read_response(reader)
                if status != 200:
                    non200 += 1
                conns.append((reader, writer))
            except Exception as e:  # noqa: BLE001 - any failure is counted, not fatal
                failed += 1
                if failed <= 3:
                    print(f"connection failed: {e!r}", file=sys.stderr, flush=True)

    await asyncio.gather(*(one() for _ in range(n)))
    print(f"ready ok={len(conns)} failed={failed} non200={non200}", flush=True)
    await asyncio.sleep(2)
    still_open = sum(1 for r, _ in conns if not r.at_eof())
    print(f"open={still_open}", flush=True)
    await asyncio.sleep(hold)
    for _, w in conns:
        w.close()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
_LE = re.compile(r'le="([^"]+)"')


def _buckets(path, metric):
    buckets = {}
    count = 0.0
    total = 0.0
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _SAMPLE.match(line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            if name == metric + "_bucket":
                le = _LE.search(labels)
                if le:
                    bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
                    buckets[bound] = buckets.get(bound, 0.0) + value
            elif name == metric + "_count":
                count += value
            elif name == metric + "_sum":
                total += value
    return buckets, count, total


def _quantile(q, bounds, cum):
    if not cum or cum[-1] <= 0:
        return float("nan")
    rank = q * cum[-1]
    prev_bound, prev_cum = 0.0, 0.0
    for bound, c in zip(bounds, cum):
        if c >= rank:
            if math.isinf(bound):
                return prev_bound  # above the last finite bucket: report its bound (a lower bound)
            if c == prev_cum:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_cum) / (c - prev_cum)
        prev_bound, prev_cum = bound, c
    return prev_bound


def _fmt_s(seconds):
    if math.isnan(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.2f} ms"


def _hist(before, after, metric):
    b0, c0, s0 = _buckets(before, metric)
    b1, c1, s1 = _buckets(after, metric)
    bounds = sorted(b1)
    cum = [b1[k] - b0.get(k, 0.0) for k in bounds]
    count = c1 - c0
    if not bounds or count <= 0:
        print(f"{metric}: no samples in the interval")
        return
    print(f"{metric} (interval): count={count:.0f} mean={_fmt_s((s1 - s0) / count)}")
    # Buckets past the last non-empty one are left out (they hold nothing).
    last = max(i for i, c in enumerate(cum) if i == 0 or c > cum[i - 1])
    prev = 0.0
    for i, (bound, c) in enumerate(zip(bounds, cum)):
        if i > last:
            break
        label = "+Inf" if math.isinf(bound) else _fmt_s(bound)
        share = 100.0 * (c - prev) / count
        print(f"  le {label:>9}: {c - prev:>10.0f}  ({share:5.1f} %, cumulative {100.0 * c / count:5.1f} %)")
        prev = c
    if last + 1 < len(bounds):
        print(f"  (no samples above {_fmt_s(bounds[last])})")
    for q in (0.5, 0.9, 0.99, 0.999):
        rank = q * cum[-1]
        i = next(i for i, c in enumerate(cum) if c >= rank)
        lo = 0.0 if i == 0 else bounds[i - 1]
        hi = "+Inf" if math.isinf(bounds[i]) else _fmt_s(bounds[i])
        print(f"  p{q * 100:g}: in bucket ({_fmt_s(lo) if lo else '0'}, {hi}], interpolated {_fmt_s(_quantile(q, bounds, cum))}")


def main(argv):
    if len(argv) == 5 and argv[0] == "hold":
        asyncio.run(_hold(argv[1], int(argv[2]), int(argv[3]), float(argv[4])))
    elif len(argv) == 4 and argv[0] == "hist":
        _hist(argv[1], argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
