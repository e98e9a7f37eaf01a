#!/usr/bin/env python3
"""Write-to-visibility latency across two instances: PATCH a product through A, then read it through B
every millisecond until B shows the new version. Prints one JSON line with the latencies (ms).

Usage: staleness.py A_ADDR B_ADDR API_KEY WRITES PRODUCTS
"""
import http.client
import json
import random
import sys
import time


def conn(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=10)


def main():
    a_addr, b_addr, key, writes, products = sys.argv[1:6]
    writes, products = int(writes), int(products)
    a, b = conn(a_addr), conn(b_addr)
    rng = random.Random(7)
    lat = []
    for i in range(writes):
        pid = rng.randint(1, products)
        # B caches the current version first, so the write has something to invalidate.
        b.request("GET", f"/api/products/{pid}")
        r = b.getresponse()
        r.read()
        body = json.dumps({"name": f"staleness probe {i}"})
        a.request("PATCH", f"/api/products/{pid}", body=body,
                  headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        r = a.getresponse()
        data = r.read()
        if r.status != 200:
            sys.exit(f"PATCH answered {r.status}: {data[:200]!r}")
        written = time.monotonic()
        version = json.loads(data)["version"]
        deadline = written + 5
        while True:
            b.request("GET", f"/api/products/{pid}")
            r = b.getresponse()
            got = json.loads(r.read())["version"]
            if got >= version:
                lat.append((time.monotonic() - written) * 1000)
                break
            if time.monotonic() > deadline:
                sys.exit(f"B did not show version {version} of product {pid} within 5 s")
            time.sleep(0.001)
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]
    print(json.dumps({"writes": len(lat), "p50_ms": round(pct(50), 2), "p90_ms": round(pct(90), 2),
                      "p99_ms": round(pct(99), 2), "max_ms": round(lat[-1], 2)}))


if __name__ == "__main__":
    main()
