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

  pool DIR [DIR ...]
      Pools several runs of the script (their result directories): per directory, tenfold's throughput,
      p99 and CPU per request against nginx's and HAProxy's (ratios of the means over each balancer's
      runs, as the script's own summary computes them); then over all directories, the same ratios of
      the pooled means, the mean of the per-directory ratios, their range, and in how many directories
      each throughput goal was met. Directories whose tenfold binary differs are listed apart: figures
      of two builds are not pooled.
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


def _runs(directory):
    """(binary hash, {kind: [(rps, p99_ms, cpu_us_per_request)]}) of one result directory."""
    binary = "?"
    with open(f"{directory}/machine.txt") as f:
        for line in f:
            if line.startswith("binary:"):
                binary = line.split()[1]
    runs = {}
    with open(f"{directory}/runs.tsv") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            requests = float(row["requests"])
            cpu = float(row["cpu_s"]) / requests * 1e6 if requests > 0 else 0.0
            runs.setdefault(row["kind"], []).append((float(row["rps"]), float(row["p99_ms"]), cpu))
    return binary, runs


def _ratios(runs, peer):
    """tenfold / peer for throughput, p99 and CPU per request (ratios of the means), or None."""
    if not runs.get("tenfold") or not runs.get(peer):
        return None

    def mean(kind, i):
        return sum(r[i] for r in runs[kind]) / len(runs[kind])

    return tuple(mean("tenfold", i) / mean(peer, i) for i in range(3))


def _interval(a, b):
    """Approximate 95 % interval of mean(a) / mean(b) for throughput (delta method on the log ratio,
    runs taken as independent samples; needs two runs of each)."""
    def stats(runs):
        xs = [r[0] for r in runs]
        m = sum(xs) / len(xs)
        var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else float("inf")
        return m, var / len(xs) / (m * m)

    ma, ra = stats(a)
    mb, rb = stats(b)
    half = 1.96 * math.sqrt(ra + rb)
    return ma / mb * math.exp(-half), ma / mb * math.exp(half)


def _pool(directories):
    groups = {}
    for d in directories:
        binary, runs = _runs(d.rstrip("/"))
        groups.setdefault(binary, []).append((d.rstrip("/"), runs))
    goal = {"nginx": 1.10, "haproxy": 1.00}
    for binary, items in groups.items():
        print(f"tenfold binary {binary}: {len(items)} script runs")
        print("| Script run | tenfold / nginx | tenfold / HAProxy | p99 vs nginx | CPU vs nginx | CPU vs HAProxy |")
        print("|---|---:|---:|---:|---:|---:|")
        pooled = {}
        for d, runs in items:
            cells = []
            rn, rh = _ratios(runs, "nginx"), _ratios(runs, "haproxy")
            for r, i in ((rn, 0), (rh, 0), (rn, 1), (rn, 2), (rh, 2)):
                cells.append(f"{r[i]:.3f}×" if r else "")
            print(f"| {d.rsplit('/', 1)[-1]} | " + " | ".join(cells) + " |")
            for kind, rs in runs.items():
                pooled.setdefault(kind, []).extend(rs)
        print()
        for peer in ("nginx", "haproxy"):
            per_dir = [r for r in (_ratios(runs, peer) for _, runs in items) if r]
            total = _ratios(pooled, peer)
            if not per_dir or not total:
                continue
            thr = [r[0] for r in per_dir]
            met = sum(1 for t in thr if t >= goal[peer])
            lo, hi = _interval(pooled["tenfold"], pooled[peer])
            print(
                f"vs {peer}: pooled means {total[0]:.3f}× throughput (95 % interval {lo:.3f}-{hi:.3f}×), "
                f"{total[1]:.3f}× p99, {total[2]:.3f}× CPU "
                f"per request ({len(pooled['tenfold'])} tenfold runs, {len(pooled[peer])} {peer} runs); "
                f"per script run {sum(thr) / len(thr):.3f}× on average, {min(thr):.3f}-{max(thr):.3f}×; "
                f"throughput goal (≥ {goal[peer]:.2f}×) met in {met} of {len(thr)}"
            )
        print()


def main(argv):
    if len(argv) == 5 and argv[0] == "hold":
        asyncio.run(_hold(argv[1], int(argv[2]), int(argv[3]), float(argv[4])))
    elif len(argv) == 4 and argv[0] == "hist":
        _hist(argv[1], argv[2], argv[3])
    elif len(argv) >= 2 and argv[0] == "pool":
        _pool(argv[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
