#!/usr/bin/env bash
# graphile-worker throughput, for bench/jobs.sh (the peer it is compared with; installed from npm into a
# cache outside the repository, never committed).
# Usage: bash bench/graphile/run.sh DATABASE_URL JOBS CONCURRENCY
#   MODE=flow (default): the runner is up and idle; one producer adds JOBS jobs one at a time (addJob);
#                        timed from the first add to the last completion.
#   MODE=drain:          JOBS jobs are added first (untimed); timed from the runner's start to the last
#                        completion.
# Optional env (all default OFF = graphile-worker defaults):
#   GW_LOCAL_QUEUE_SIZE=N          preset.worker.localQueue.size (batch job fetching; default -1 = off)
#   GW_COMPLETE_JOB_BATCH_DELAY=MS preset.worker.completeJobBatchDelay (batch completions; default -1 = off)
#   GW_MAX_POOL_SIZE=N             maxPoolSize (default 10)
#   GW_VERSION=x.y.z               graphile-worker version to install (default 0.17.3)
#   GW_TIMEOUT_S=N                 hard timeout for the node run (default 600)
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: bash $0 DATABASE_URL JOBS CONCURRENCY" >&2; exit 2
fi
DB_URL=$1 JOBS=$2 CONC=$3
[[ $JOBS =~ ^[1-9][0-9]*$ && $CONC =~ ^[1-9][0-9]*$ ]] || { echo "error: JOBS and CONCURRENCY must be positive integers" >&2; exit 2; }

DIR="${GW_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tenfold-bench/graphile}"
MODE="${MODE:-flow}"
# 0.17.3 is the newest release that supports Node 20 (0.18.0 requires node >=22.18).
GW_VERSION=${GW_VERSION:-0.17.3}
mkdir -p "$DIR"; cd "$DIR"

command -v node >/dev/null || { echo "error: node not found (apt-get install nodejs npm)" >&2; exit 1; }
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 18 ] || { echo "error: node >= 18 required, found $(node --version)" >&2; exit 1; }

# 1. install (idempotent)
[ -f package.json ] || echo '{ "name": "gw-bench", "version": "1.0.0", "private": true }' > package.json
INSTALLED=$(node -p 'try{require("graphile-worker/package.json").version}catch(e){""}' 2>/dev/null || true)
if [ "$INSTALLED" != "$GW_VERSION" ]; then
  npm install --no-audit --no-fund --save-exact "graphile-worker@$GW_VERSION" >&2
fi

# 2. schema
if ! out=$("$DIR/node_modules/.bin/graphile-worker" --schema-only -c "$DB_URL" 2>&1); then
  echo "$out" >&2; echo "error: graphile-worker schema migration failed" >&2; exit 1
fi

# 3. node benchmark script (regenerated each run so run.sh is self-contained)
cat > "$DIR/bench.js" <<'EOF'
"use strict";
const { run, Logger } = require("graphile-worker");
const { Client } = require(require.resolve("pg", { paths: [require.resolve("graphile-worker")] }));
const { EventEmitter } = require("events");
const { performance } = require("perf_hooks");

const [connectionString, jobsArg, concArg, mode] = process.argv.slice(2);
const DRAIN = mode === "drain";
const JOBS = parseInt(jobsArg, 10), CONCURRENCY = parseInt(concArg, 10);
const envInt = (k) => (process.env[k] ? parseInt(process.env[k], 10) : undefined);
const LOCAL_QUEUE_SIZE = envInt("GW_LOCAL_QUEUE_SIZE");
const COMPLETE_BATCH_DELAY = envInt("GW_COMPLETE_JOB_BATCH_DELAY");
const MAX_POOL_SIZE = envInt("GW_MAX_POOL_SIZE");

// Drop info/debug logs (one line per job otherwise); keep warnings/errors.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[gw ${level}] ${message}`);
});

function fail(msg) { console.error(`error: ${msg}`); process.exit(1); }

async function main() {
  const events = new EventEmitter();
  let done = 0, resolveAll, resolveListen;
  const allDone = new Promise((r) => (resolveAll = r));
  const listening = new Promise((r) => (resolveListen = r));
  events.on("pool:listen:success", () => resolveListen());
  events.on("job:success", () => { if (++done === JOBS) resolveAll(performance.now()); });
  events.on("job:error", ({ error }) => fail(`job failed: ${error}`));
  events.on("pool:fatalError", ({ error }) => fail(`pool fatal error: ${error}`));

  const worker = {};
  if (LOCAL_QUEUE_SIZE !== undefined) worker.localQueue = { size: LOCAL_QUEUE_SIZE };
  if (COMPLETE_BATCH_DELAY !== undefined) worker.completeJobBatchDelay = COMPLETE_BATCH_DELAY;

  if (DRAIN) {
    // Fill the queue before any worker runs (not timed): one add_job per job, as a producer would.
    const pre = new Client({ connectionString });
    await pre.connect();
    for (let i = 0; i < JOBS; i++) await pre.query("select graphile_worker.add_job('noop', '{}'::json)");
    await pre.end();
  }
  const tRun = performance.now();
  const runner = await run({
    connectionString,
    concurrency: CONCURRENCY,
    ...(MAX_POOL_SIZE !== undefined ? { maxPoolSize: MAX_POOL_SIZE } : {}),
    preset: { worker },
    taskList: { noop: async () => {} },
    parsedCronItems: [],
    events,
    logger,
    noHandleSignals: false,
  });
  runner.promise.catch((e) => fail(`runner exited: ${e}`));
  await Promise.race([listening, new Promise((_, rej) => setTimeout(() => rej(new Error("LISTEN not ready in 30s")), 30000))]);

  const check = new Client({ connectionString });
  await check.connect();
  const leftover = (await check.query("select count(*)::int n from graphile_worker._private_jobs")).rows[0].n;
  if (!DRAIN && leftover !== 0) fail(`database not empty: ${leftover} jobs already queued`);

  // Flow: enqueue one job at a time through the runner's addJob (= select graphile_worker.add_job(...)).
  const t0 = DRAIN ? tRun : performance.now();
  if (!DRAIN) for (let i = 0; i < JOBS; i++) await runner.addJob("noop", {});
  const tEnq = performance.now();
  const tSuccess = await allDone;
  // job:success fires before the completion DELETE is issued; wait until it is durable.
  let remaining;
  while ((remaining = (await check.query("select count(*)::int n from graphile_worker._private_jobs")).rows[0].n) > 0) {
    await new Promise((r) => setTimeout(r, 2));
  }
  const tEnd = performance.now();

  await runner.stop();
  await check.end();
  const secs = (tEnd - t0) / 1000;
  console.error(`detail: enqueue_s=${((tEnq - t0) / 1000).toFixed(3)} last_success_s=${((tSuccess - t0) / 1000).toFixed(3)} all_deleted_s=${secs.toFixed(3)} ` +
    `localQueue.size=${LOCAL_QUEUE_SIZE ?? -1} completeJobBatchDelay=${COMPLETE_BATCH_DELAY ?? -1} maxPoolSize=${MAX_POOL_SIZE ?? 10}`);
  console.log(`graphile-worker mode=${DRAIN ? "drain" : "flow"} jobs=${JOBS} concurrency=${CONCURRENCY} seconds=${secs.toFixed(2)} jobs_per_s=${Math.round(JOBS / secs)}`);
}

main().then(() => process.exit(0), (e) => fail(e && e.stack ? e.stack : String(e)));
EOF

# 4. run (NO_LOG_SUCCESS skips graphile-worker's per-job success log formatting)
export NO_LOG_SUCCESS=1
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null || true' EXIT INT TERM
timeout --kill-after=5 "${GW_TIMEOUT_S:-600}" node "$DIR/bench.js" "$DB_URL" "$JOBS" "$CONC" "$MODE" &
PID=$!
set +e; wait "$PID"; RC=$?; set -e
PID=
[ $RC -eq 0 ] || { echo "error: benchmark failed (exit $RC)" >&2; exit $RC; }
