"""The prose of docs/benchmarks.md that does not come from one run's numbers: what the
benchmark is, how to run it, the decisions it supports, and the performance changes made
(with the figures measured when they were made)."""

INTRO = [
    "What the collections service costs and how close it stays to UtilityAPI's rate limit, "
    "measured end to end: real `celery -A project worker` processes, the built-in UtilityAPI "
    "sandbox (`manage.py utilityapi_sandbox`) and gunicorn as subprocesses, a PostgreSQL "
    "database and a Redis db of the benchmark's own, all on loopback. This file is written by "
    "`make bench` (scripts/bench.py, helpers in scripts/benchlib/); the sections below the "
    "tables are kept in scripts/benchlib/notes.py.",
    "",
    "Read the figures as ratios against the baselines measured in the same run (the allowed "
    "rate, the bare requests loop, scenario 1 for coalescing): the machine below may be shared, "
    "and every process of the system (workers, PostgreSQL, Redis, the sandbox, the driver) runs "
    "on its two cores.",
]

HOW_TO_RUN = [
    "## How to run",
    "",
    "```",
    "make bench                                        # everything, 3 runs each: ~20 minutes",
    'make bench BENCH_ARGS="--quick"                   # smoke run: tiny counts, 1 run, ~30 s',
    'make bench BENCH_ARGS="--runs 5 --only rate,storm"',
    'make bench BENCH_ARGS="--pools threads:16,threads:8x2,prefork:16"',
    'make bench BENCH_ARGS="--worker-tree /path/to/other/checkout"  # its workers, same rig',
    "```",
    "",
    "- Needs PostgreSQL and Redis (as `make test` does). The PostgreSQL server is the one "
    "`DATABASE_URL` names (default `postgres://postgres@127.0.0.1:5432`): the benchmark drops "
    "and creates its own database there (`--database`, default `bench`), migrates it, and drops "
    "it at the end (`--keep-db` keeps it). Redis is `BENCH_REDIS_URL` (default "
    "`redis://127.0.0.1:6379`), db `--redis-db` (default 9), which it flushes. Nothing else "
    "is touched; all traffic stays on 127.0.0.1.",
    "- `--pools`: the worker settings compared, `POOL:CONCURRENCY[xPROCESSES]`; the first is "
    "the one used for scenarios 3–6. Alternatives get one run in scenario 1 (each run is a "
    "minute) and every run in scenario 2.",
    "- `--only`: any of `rate,overhead,storm,coalescing,scale` (scenario 6's comparison with "
    "scenario 1 needs `rate`).",
    "- `--out` (default docs/benchmarks.md), `--json PATH` for the raw figures of every run.",
    "- `tests/test_bench_smoke.py` runs `--quick` in the test suite and checks the report's "
    "shape (no timing is asserted).",
    "",
    "Definitions: *drain* is from the call that creates the requests to the last outcome "
    "stored (the rows' `updated`); *requests/s* is requests / drain; *busiest 1 s* is the "
    "most calls that reached the sandbox within any one second; an *early call* is one that "
    "arrived while a Retry-After it had announced was still running; *worker CPU* is user + "
    "system time of the worker process tree (from /proc) over the run, per request; *peak RSS* "
    "is the sum of the worker processes' VmHWM.",
]

DECISIONS = [
    "## Decisions",
    "",
    "**Worker pool: threads; concurrency 16 per process (the Procfile's).** A send is a "
    "short burst of CPU around a wait for UtilityAPI, so threads are the right pool: one "
    "process of 16 threads takes about 110 MB, prefork with the same concurrency about 1.5 GB "
    "for no more throughput (scenario 2) and no better rate-limit behaviour (scenario 1). "
    "At the vendor's 50 calls/s with ~50 ms answers only 3–4 sends are in flight, so even "
    "`threads × 4` keeps up; 16 leaves room for a slow vendor (at 300 ms, 15 are in flight) "
    "and for the waits on rate-limit slots, which hold a thread for up to "
    "COLLECTIONS_SLOT_MAX_WAIT_SECONDS. One process is bound to one core by the GIL: with "
    "coalescing off it tops out at roughly 120 sends/s here. When more is needed (a raised "
    "rate limit), run one worker process per core (`2 workers of threads × 8` in scenario 2) "
    "rather than more threads in one.",
    "",
    "**Coalescing: on by default (COLLECTIONS_BATCH_MAX_METERS=1000) with a 20 ms window "
    "(COLLECTIONS_COALESCE_WINDOW_MS=20).** A burst of 3,000 one-meter requests goes out in a "
    "handful of calls and is done in seconds instead of the minute the rate limit imposes on "
    "3,000 calls (scenario 6 against scenario 1), and it leaves the rate limit free for other "
    "work. The window costs a lone request about 20 ms (scenario 6's lone request table: the "
    "sandbox's 50 ms is in both figures), nothing next to a collection that runs for minutes. "
    "It lets requests created one by one (an API client in a loop) share calls: the stream "
    "table shows the calls with and without it. How many it saves depends on how fast the "
    "workers pick requests up (other runs on this machine: 172 calls without and 65 with it; "
    "16 and 15 when calls were queuing for the rate limit anyway, so requests piled up and "
    "shared calls regardless). Calls are the scarce resource (50 a second for the whole "
    "account), so the window stays. With "
    "coalescing off (COLLECTIONS_BATCH_MAX_METERS=1) it is not applied at all.",
    "",
    "**Scenario 2's target (≥ 0.9 of the bare loop at 50 ms) is met with the defaults, not "
    "with coalescing off, on this machine.** With coalescing off every request is a Celery "
    "message, a result row in the database (kept: the admin links each attempt to its task "
    "result), four queries and two Redis scripts: about 6–7 ms of worker CPU against ~1 ms for "
    "a bare POST, on two cores shared with PostgreSQL, Redis and the sandbox. The end-to-end "
    "rate is CPU-bound there (about 120/s for one worker process), where the bare loop is "
    "bound by latency (16 threads / 50 ms = 320/s). A machine with more cores, or coalescing, "
    "closes the gap.",
    "",
    "**Scenario 1's margin is thin by design.** The gate spaces calls at "
    "rate × (1 − UTILITYAPI_RATE_HEADROOM) = 48.5/s, so the best possible drain of 3,000 "
    "requests is 61.9 s (97% of the allowed rate); the first call goes out a few hundred ms "
    "after the requests are created. A busy host can still delay a call that passed the gate's "
    "last check by tens of milliseconds, so a 429 can occur when the machine is saturated "
    "(it is honoured fleet-wide, and the request is retried after its Retry-After): "
    "prefork × 16, sixteen processes competing for two cores, shows it in scenario 1.",
    "",
    "**Scenario 3: after a 429, at most a call already past the gate.** The pause is stored in "
    "Redis as soon as the 429 is read, and every worker checks it right before each POST; a "
    "call that passed that check in the few milliseconds between the 429's answer and the "
    "pause being stored can still arrive inside the Retry-After (none in this run; one in "
    "one of three runs of an earlier full run, before the pause was stored in one round "
    "trip). The drain after the 429 stays within a few percent of the ideal "
    "(Retry-After + requests / 50).",
]

CHANGES = [
    "## Changes made for performance",
    "",
    "Measured first, then changed; each figure pair comes from the same rig in the same hour "
    "(2026-11-25, this machine): *before* with the workers of commit c0fb3de "
    "(`--worker-tree`), *after* with the workers of the current tree, one run each, "
    "`threads × 16`. Scenario 1 before → after: drain 86.6 s → 63.3 s (69% → 95% of the "
    "allowed rate), 429s 66 → 3, early calls 4 → 0, worker CPU 18.6 → 7.2 ms per request, "
    "peak RSS 186 → 109 MB. Scenario 2 (coalescing off, 0 ms): 67.5 → 125.9 requests/s, "
    "worker CPU 13.1 → 6.6 ms per request; with the defaults at 50 ms: 149 → 2,078 "
    "requests/s (0.51 → 6.8 of the bare loop).",
    "",
    "1. **One PostgreSQL connection per worker thread instead of one per task** "
    "(project/settings.py `CELERY_DB_REUSE_MAX`, project/celery.py `reuse_db_connections`). "
    "Celery's Django fixup closed the database connection around every task, so every task "
    "paid for a new PostgreSQL backend (≈ 4.7 ms measured here, mostly on the database's "
    "side). Now connections are closed between tasks only when broken or older than "
    "CONN_MAX_AGE, and health-checked before reuse, as Django does between web requests.",
    "2. **Claim in one UPDATE** (services.claim, delivery.deliver). Delivery reads the row "
    "once; the claim's UPDATE takes the lease only if the row is still due, free and unchanged "
    "since that read (same `updated`), so nothing is read back, and without companions no "
    "transaction is opened. Before: read, BEGIN, UPDATE, read, read by lease token, COMMIT. "
    "The separate pause check before the claim is gone too: the slot reservation already "
    "refuses a slot during a pause, and the batch is deferred as before.",
    "3. **No lease renewal when the lease is fresh** (services.renew): it writes only when "
    "the wait for a send slot ate into the lease's margin.",
    "4. **Outcomes written without bulk_update** (services._update_rows). One request: one "
    "UPDATE that also checks the lease (it replaces a SELECT … FOR UPDATE plus an UPDATE). A "
    "coalesced batch: one UPDATE per group of alike rows (accepted meters that are all the "
    'request\'s meters are written as `F("meters")`), instead of a CASE per field and row: a '
    "1,000-request batch's outcome took 2.3 s (1.7 s of worker CPU, a quadratic UPDATE), now "
    "0.09 s.",
    "5. **One Redis script right before each POST** (gate.clear_to_send). It checks the pauses "
    "(a 429 may have come while the worker slept for its slot), caps the calls actually sent in "
    "the last second at what the slot spacing lets out (49 at 50/s), holding back a late-waking "
    "thread that would otherwise bunch with punctual ones (the cause of most 429s before), and "
    "logs the call for the dashboard's rate. It replaces a pause check and a call log (two "
    "pipelines, each copying redis-py's 170-entry callback table). The scripts run by EVALSHA.",
    "6. **The fleet pause is stored first, in one round trip** after a 429 (delivery.send, "
    "gate.pause): the call log was written before it, and the pause took two Redis round "
    "trips (PTTL, then SET); each left the other workers longer to send calls into the "
    "Retry-After.",
    "7. **The environment is read once per HTTP session** (client.UtilityAPIClient.session): "
    "requests' `trust_env` scanned os.environ for proxies on every call; the proxies and CA "
    "bundle are now read when the session is made (a `.netrc` is no longer consulted: the "
    "Authorization header is ours).",
    "8. **No coalescing window when coalescing is off** (services.dispatch): the countdown "
    "bought nothing and sent every message through the worker's ETA timer.",
    "9. **The sandbox answers without Nagle's delay** (sandbox.Handler, TCP_NODELAY): it wrote "
    "headers and body separately, so every answer on a kept-alive connection waited ~40 ms for "
    "the client's delayed ACK: `--latency-ms 0` was 40 ms and `--latency-ms 50` was 90 ms. "
    "The bare loop at 0 ms went from 344 to about 1,000 requests/s.",
    "",
    "Left as they are: the result backend's row per task (kept for the admin; about 1 ms of "
    "worker CPU per task), and Celery's own message handling (about 1.5 ms per task). With "
    "coalescing on, a burst's messages after the first few find their rows already sent: each "
    "still costs a task (scenario 6's *queue empty after*), and a row skipped by a concurrent "
    "claim waits behind them (the few seconds of scenario 6's drain).",
]
