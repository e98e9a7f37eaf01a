#!/usr/bin/env bash
# API fuzzing with Schemathesis against one `tenfold app` instance over a fresh SQLite catalog.
#
#   bash bench/fuzz/schemathesis.sh                       # MAX_EXAMPLES=4000: about 2.5 minutes on 2 cores
#   MAX_EXAMPLES=500 bash bench/fuzz/schemathesis.sh      # quick smoke run (about 30 s)
#   MAX_EXAMPLES=20000 bash bench/fuzz/schemathesis.sh    # full size (about 12 minutes)
#   SEED=12345 bash bench/fuzz/schemathesis.sh            # another seed (default 1: reproducible)
#   REPORT_DIR=/tmp/st bash bench/fuzz/schemathesis.sh    # where the reports go
#
# What it does: copies target/release/tenfold (or $TENFOLD_BIN) into a temp dir, seeds PRODUCTS (200)
# products into a temp SQLite DB, starts `tenfold app` on 127.0.0.1:0 with a test API key, and runs
# `schemathesis run` against http://ADDR/api/openapi.json with `Authorization: Bearer <key>`
# (Schemathesis skips the document's own GET /api/openapi.json, so it tests 10 of the 11 operations):
#   - every check (`--checks all`): not_a_server_error, status_code_conformance,
#     content_type_conformance, response_headers_conformance, response_schema_conformance,
#     negative_data_rejection, positive_data_acceptance, missing_required_header, unsupported_method,
#     allow_header_conformance, use_after_free, ensure_resource_availability, ignored_auth, ...
#   - every phase: examples, coverage, fuzzing and stateful (links inferred from Location headers);
#   - positive and negative data (`--mode all`);
#   - MAX_EXAMPLES test cases per operation (`-n`), WORKERS threads (default 1: with 2 workers, CPython
#     3.11.7's ast.parse is not thread-safe (cpython#106905) and Hypothesis can die with "SystemError: AST
#     constructor recursion depth mismatch", losing one operation's phase; one worker is as fast here).
# Afterwards it summarises the NDJSON report (failures grouped by operation, check and status, with the
# status codes seen) and scans the app log for panics and 5xx. Reports (NDJSON, JUnit, the console log,
# the app log, summary.txt) stay in REPORT_DIR (default bench/results/schemathesis-<UTC time>/).
#
# Loopback only; the Schemathesis run is bounded by TIMEOUT seconds (default 300 + MAX_EXAMPLES/10), and
# every process this script starts is stopped on exit (bench/lib.sh). Installs Schemathesis with pip when
# it is missing (SCHEMATHESIS_VERSION, default 4.32.5, into $PYTHON, default python3 >= 3.9).
#
# Exit status: Schemathesis's own (0 = no failure, 1 = failures found), or 3 when the app panicked,
# answered with a 5xx, or died, even if Schemathesis did not flag it.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

MAX_EXAMPLES="${MAX_EXAMPLES:-4000}"
SEED="${SEED:-1}"
WORKERS="${WORKERS:-1}"
PRODUCTS="${PRODUCTS:-200}"
[[ "$MAX_EXAMPLES" =~ ^[1-9][0-9]*$ ]] || bench_die "MAX_EXAMPLES must be a positive integer"
TIMEOUT="${TIMEOUT:-$((300 + MAX_EXAMPLES / 10))}"
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
API_KEY="fuzz-api-key-0123456789"
PYTHON="${PYTHON:-python3}"

command -v curl >/dev/null 2>&1 || bench_die "curl is required"
command -v "$PYTHON" >/dev/null 2>&1 || bench_die "$PYTHON is required"

# Schemathesis: the `schemathesis` on PATH, else the module in $PYTHON, else pip-install the pinned
# version into $PYTHON (run through its module entry point, so a --user install off PATH works too).
st_module=("$PYTHON" -c 'import sys; from schemathesis.cli import schemathesis; sys.argv[0] = "schemathesis"; sys.exit(schemathesis())')
if command -v schemathesis >/dev/null 2>&1; then
    ST=(schemathesis)
elif "${st_module[@]}" --version >/dev/null 2>&1; then
    ST=("${st_module[@]}")
else
    bench_log "schemathesis not found; installing schemathesis==$SCHEMATHESIS_VERSION with pip"
    "$PYTHON" -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION" >&2 ||
        "$PYTHON" -m pip install --quiet --user "schemathesis==$SCHEMATHESIS_VERSION" >&2
    ST=("${st_module[@]}")
fi
st_version="$("${ST[@]}" --version 2>/dev/null | awk '{ print $NF }')" || true
case "$st_version" in
    4.*) ;;
    *) bench_die "this script needs Schemathesis 4.x (found '$st_version'); pip install 'schemathesis==$SCHEMATHESIS_VERSION'" ;;
esac

bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
db_url="sqlite://$work/tenfold.db"
REPORT_DIR="${REPORT_DIR:-$RESULTS_DIR/schemathesis-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$REPORT_DIR"

timeout --foreground --kill-after=5 120 "$bin" seed --products "$PRODUCTS" --database-url "$db_url" \
    >"$REPORT_DIR/seed.txt" 2>&1 || { cat "$REPORT_DIR/seed.txt" >&2; bench_die "seeding failed"; }

# Only this script's settings reach the app: drop any TENFOLD_* from the caller's environment.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^TENFOLD_' | grep -v '^TENFOLD_BIN$' || true)
export TENFOLD_API_KEY="$API_KEY"
bench_start_app "$bin" "$db_url" "$work"
base="http://$APP_ADDR"
bench_log "app pid $APP_PID on $APP_ADDR; schemathesis $st_version, max examples $MAX_EXAMPLES, seed $SEED"
curl -fsS --max-time 5 "$base/readyz" >/dev/null || bench_die "the app is not ready"
curl -fsS --max-time 5 -o "$REPORT_DIR/openapi.json" "$base/api/openapi.json" || bench_die "no OpenAPI document"

# shellcheck disable=SC2054 # the commas are Schemathesis's list syntax
st_args=(
    run "$base/api/openapi.json"
    --header "Authorization: Bearer $API_KEY"
    --checks all
    --phases examples,coverage,fuzzing,stateful
    --mode all
    --max-examples "$MAX_EXAMPLES"
    --seed "$SEED"
    --workers "$WORKERS"
    --continue-on-failure
    --request-timeout 15
    --generation-database none
    --output-sanitize false
    --no-color
    --report ndjson,junit
    --report-dir "$REPORT_DIR"
    --report-ndjson-path "$REPORT_DIR/schemathesis.ndjson"
    --report-junit-path "$REPORT_DIR/schemathesis.junit.xml"
)
printf '%q ' "${ST[@]}" "${st_args[@]}" >"$REPORT_DIR/command.txt"
echo >>"$REPORT_DIR/command.txt"

# Runs in the background (tracked, so an interrupted script stops it) with its output followed live.
: >"$REPORT_DIR/schemathesis.txt"
(cd "$work" && exec timeout --kill-after=30 "$TIMEOUT" "${ST[@]}" "${st_args[@]}") \
    >"$REPORT_DIR/schemathesis.txt" 2>&1 &
st_pid=$!
bench_track_pid "$st_pid"
tail -n +1 -f "$REPORT_DIR/schemathesis.txt" &
tail_pid=$!
bench_track_pid "$tail_pid"
st_rc=0
wait "$st_pid" || st_rc=$?
sleep 0.2
bench_stop_pid "$tail_pid"
[[ "$st_rc" == 124 ]] && bench_log "schemathesis hit the ${TIMEOUT}s timeout"

app_alive=1
kill -0 "$APP_PID" 2>/dev/null || app_alive=0
bench_stop_pid "$APP_PID"
cp -- "$work/app.stderr" "$REPORT_DIR/app.stderr"

# Groups the failures of the NDJSON report and lists the response statuses seen per operation.
"$PYTHON" - "$REPORT_DIR/schemathesis.ndjson" "$REPORT_DIR/openapi.json" >"$REPORT_DIR/summary.txt" <<'PY'
import base64, collections, json, sys

documented = {(m.upper(), p) for p, item in json.load(open(sys.argv[2], encoding="utf-8"))["paths"].items() for m in item}
failures = collections.OrderedDict()
statuses = collections.defaultdict(collections.Counter)
undocumented = collections.Counter()
responses = 0
errors = []


def body_text(body):
    if isinstance(body, dict) and "$base64" in body:
        return base64.b64decode(body["$base64"]).decode("utf-8", "backslashreplace")
    return "" if body is None else str(body)


for line in open(sys.argv[1], encoding="utf-8"):
    event = json.loads(line)
    if "NonFatalError" in event:
        err = event["NonFatalError"]
        errors.append(f"{err.get('label')} [{err.get('phase')}]: {err['value']['type']}: {err['value']['message'].splitlines()[0]}")
    fin = event.get("ScenarioFinished")
    if not fin:
        continue
    rec = fin.get("recorder") or {}
    interactions = rec.get("interactions") or {}
    for case_id, inter in interactions.items():
        resp = inter.get("response")
        if not resp:
            continue
        responses += 1
        value = ((rec.get("cases") or {}).get(case_id) or {}).get("value") or {}
        op = (inter["request"]["method"].upper(), value.get("path", "?"))
        if op in documented:
            statuses[" ".join(op)][resp["status_code"]] += 1
        else:
            undocumented[resp["status_code"]] += 1
    for case_id, checks in (rec.get("checks") or {}).items():
        for check in checks:
            if check.get("status") != "failure":
                continue
            info = (check.get("failure_info") or {}).get("failure") or {}
            inter = interactions.get(case_id) or {}
            resp = inter.get("response") or {}
            key = (info.get("operation") or rec.get("label"), check["name"], info.get("title", ""), resp.get("status_code"))
            entry = failures.setdefault(key, {"count": 0, "phases": set()})
            entry["count"] += 1
            entry["phases"].add(fin.get("phase"))
            if "example" not in entry:
                req = inter.get("request") or {}
                body = body_text(req.get("body"))
                hdrs = {k: v for k, v in (req.get("headers") or {}).items() if k.lower() not in ("authorization", "user-agent", "accept", "accept-encoding", "connection", "content-length")}
                entry["example"] = f"{req.get('method')} {req.get('uri')} {hdrs if hdrs else ''}" + (f" body={body}" if body else "")
                entry["response"] = body_text(resp.get("content"))
                entry["message"] = (info.get("message") or "").replace("\n", " | ")

print(f"responses recorded: {responses}")
print("status codes per documented operation:")
for op in sorted(statuses):
    print(f"  {op}: " + ", ".join(f"{s}x{n}" for s, n in sorted(statuses[op].items())))
print("  undocumented methods (unsupported_method probes): " + ", ".join(f"{s}x{n}" for s, n in sorted(undocumented.items())))
print(f"\nschemathesis errors (tool or server-unavailable, not check failures): {len(errors)}")
for e in errors:
    print(f"- {e}")
print(f"\nfailure groups: {len(failures)} (operation | check | title | response status: count [phases])")
for (op, check, title, status), e in failures.items():
    print(f"- {op} | {check} | {title} | {status}: {e['count']} [{','.join(sorted(e['phases']))}]")
    print(f"    {e['message'][:300]}")
    print(f"    request:  {e['example'][:500]}")
    print(f"    response: {e['response'][:300]}")
PY

panics="$(grep -c 'panicked' "$REPORT_DIR/app.stderr" || true)"
server_errors="$(grep -c 'request failed' "$REPORT_DIR/app.stderr" || true)"
{
    echo
    echo "schemathesis exit code: $st_rc"
    echo "app log: ${panics:-0} panic line(s), ${server_errors:-0} 5xx response(s) logged; app alive at the end: $([[ $app_alive == 1 ]] && echo yes || echo NO)"
    if [[ "$app_alive" != 1 ]]; then
        if grep -q 'shutting down' "$REPORT_DIR/app.stderr"; then
            echo "the app shut down gracefully before the run ended: it got SIGTERM/SIGINT from outside this script"
        else
            echo "the app died without a graceful shutdown (crash or SIGKILL); last log lines:"
            tail -n 5 "$REPORT_DIR/app.stderr"
        fi
    fi
} >>"$REPORT_DIR/summary.txt"

echo
echo "=== summary ($REPORT_DIR/summary.txt) ==="
cat "$REPORT_DIR/summary.txt"
bench_log "reports in $REPORT_DIR"

if [[ "${panics:-0}" != 0 || "${server_errors:-0}" != 0 || "$app_alive" != 1 ]]; then
    bench_log "the app panicked, answered 5xx or died: see $REPORT_DIR/app.stderr"
    exit 3
fi
exit "$st_rc"
