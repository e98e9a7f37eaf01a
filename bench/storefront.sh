#!/usr/bin/env bash
# The storefront: (1) product page HTML served from the page memo through one `tenfold app`, against
# GET /healthz on the same instance in the same run (wrk, keep-alive, Accept-Encoding: br as browsers
# send it); (2) bytes on the wire for a first visit to a product page at a phone width (HTML + CSS + JS +
# the image the browser picks), with and without Save-Data, measured by headless Chromium (Debian's
# package) over the DevTools performance log through chromedriver.
#
#   bash bench/storefront.sh
#   DURATION=5s CONNECTIONS=32 bash bench/storefront.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
KEY="bench-api-key-0123456789"

bench_ensure_wrk
command -v python3 >/dev/null 2>&1 || bench_die "python3 is required"
command -v chromedriver >/dev/null 2>&1 || bench_die "chromedriver is required (apt-get install chromium chromium-driver)"
command -v ffmpeg >/dev/null 2>&1 || bench_die "ffmpeg is required (it makes the test photo)"
secs="$(bench_seconds "$DURATION")"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/storefront-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
export TENFOLD_API_KEY="$KEY" TENFOLD_MEDIA__DIR="$work/blobs"
db="sqlite://$work/tenfold.db"

"$bin" seed --products 1000 --database-url "$db" >/dev/null 2>"$work/seed.stderr"
bench_start_app "$bin" "$db" "$work"
base="http://$APP_ADDR"
"$bin" worker --database-url "$db" --queues media --concurrency 1 >"$work/worker.out" 2>"$work/worker.err" &
wpid=$!
bench_track_pid "$wpid"

# A 1600x1200 photo-like JPEG for product 42, rendered by the worker.
ffmpeg -loglevel error -f lavfi -i "testsrc2=size=1600x1200" -frames:v 1 -q:v 3 "$work/photo.jpg"
curl -sS --max-time 10 -o "$work/upload.json" -H "authorization: Bearer $KEY" \
    -H 'content-type: application/octet-stream' --data-binary "@$work/photo.jpg" "$base/api/products/42/media"
job="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["job"]["id"])' "$work/upload.json")"
for ((i = 0; i < 300; i++)); do
    state="$(curl -sS --max-time 2 -H "authorization: Bearer $KEY" "$base/api/jobs/$job" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
    [[ "$state" == done ]] && break
    [[ "$state" == failed || "$state" == dead ]] && bench_die "the rendition job ended $state"
    sleep 0.1
done
[[ "$state" == done ]] || bench_die "the rendition job did not finish"
bench_stop_pid "$wpid"
sleep 2.5 # the page reads renditions at most every 2 s
page="$base/products/42"
curl -sS -o /dev/null -H 'accept-encoding: br' "$page" # render once

bench_log "app on $APP_ADDR; wrk -c$CONNECTIONS -d$DURATION on /healthz and $page"
run_wrk() { # run_wrk NAME URL
    timeout --foreground $((secs + 60)) wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency \
        -H 'accept-encoding: br' "$2" >"$out/$1.txt" 2>&1
}
run_wrk healthz "$base/healthz"
run_wrk product "$page"
run_wrk healthz-2 "$base/healthz"
run_wrk product-2 "$page"
curl -sS -o "$out/product.html.br" -D "$out/product.headers" -H 'accept-encoding: br' "$page"

# Bytes on the wire for a first visit, as Chromium counts them (encodedDataLength of every response).
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
chromedriver --port="$port" --allowed-ips=127.0.0.1 >"$work/chromedriver.log" 2>&1 &
cpid=$!
bench_track_pid "$cpid"
for ((i = 0; i < 100; i++)); do curl -s "http://127.0.0.1:$port/status" >/dev/null && break; sleep 0.1; done
python3 - "$port" "$page" >"$out/wire.json" <<'PY'
import json, sys, time, urllib.request
port, page = sys.argv[1], sys.argv[2]
def call(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["value"]
out = {}
for label, save_data in (("plain", False), ("save_data", True)):
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server",
            "--window-size=412,915", "--force-device-scale-factor=2.625"]
    caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:loggingPrefs": {"performance": "ALL"},
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args,
                                   "mobileEmulation": {"deviceMetrics": {"width": 412, "height": 915, "pixelRatio": 2.625}}}}}}
    sid = call("POST", "/session", caps)["sessionId"]
    try:
        if save_data:
            call("POST", f"/session/{sid}/goog/cdp/execute", {"cmd": "Network.enable", "params": {}})
            call("POST", f"/session/{sid}/goog/cdp/execute",
                 {"cmd": "Network.setExtraHTTPHeaders", "params": {"headers": {"Save-Data": "on"}}})
        call("POST", f"/session/{sid}/url", {"url": page})
        time.sleep(1.5)
        logs = call("POST", f"/session/{sid}/se/log", {"type": "performance"})
        urls, total = {}, 0
        for entry in logs:
            m = json.loads(entry["message"])["message"]
            if m["method"] == "Network.responseReceived":
                urls[m["params"]["requestId"]] = m["params"]["response"]["url"]
            if m["method"] == "Network.loadingFinished":
                rid = m["params"]["requestId"]
                n = int(m["params"]["encodedDataLength"])
                total += n
                u = urls.get(rid, "?")
                out.setdefault(label, {})[u.split("/", 3)[-1]] = n
        out.setdefault(label, {})["_total"] = total
    finally:
        call("DELETE", f"/session/{sid}")
print(json.dumps(out, indent=1))
PY
bench_stop_pid "$cpid"
bench_stop_pid "$APP_PID"

python3 - "$out" "$CONNECTIONS" "$DURATION" <<'PY' | tee "$out/summary.md"
import json, re, sys
out, conns, dur = sys.argv[1], sys.argv[2], sys.argv[3]
def rps(name):
    m = re.search(r"Requests/sec:\s+([\d.]+)", open(f"{out}/{name}.txt").read())
    return float(m.group(1))
def p99(name):
    t = open(f"{out}/{name}.txt").read()
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
    v = float(m.group(1)); return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
print(f"\n== storefront ({out.rsplit('/', 1)[-1]}; wrk -t2 -c{conns} -d{dur}, keep-alive, Accept-Encoding: br) ==\n")
print("| Round | /healthz req/s | Product page req/s | Ratio | Product page p99 (ms) |")
print("|---|---:|---:|---:|---:|")
for i, (h, p) in enumerate((("healthz", "product"), ("healthz-2", "product-2")), 1):
    print(f"| {i} | {rps(h):,.0f} | {rps(p):,.0f} | {rps(p) / rps(h):.2f} | {p99(p):.2f} |")
wire = json.load(open(f"{out}/wire.json"))
print("\nFirst visit to /products/42 at 412 CSS px, DPR 2.625 (bytes on the wire, headers included, as Chromium counts them):\n")
print("| Resource | Plain | Save-Data |")
print("|---|---:|---:|")
keys = sorted({k for v in wire.values() for k in v if k != "_total"})
for k in keys:
    print(f"| {k} | {wire['plain'].get(k, '—')} | {wire['save_data'].get(k, '—')} |")
print(f"| **total** | **{wire['plain']['_total']:,}** | **{wire['save_data']['_total']:,}** |")
print(f"\nraw output: {out}")
PY
