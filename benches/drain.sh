#!/usr/bin/env bash
# The async shipper's drain rate (row images, snapshot ranges): a backlog queued on a real
# primary while no shipper runs, then drained to a real replica through capgate's test link,
# without added latency and with 25 ms each way (50 ms round trip), in the same run.
# Workloads: single-row inserts (CAPGATE_DRAIN_ROWS, default 50,000) and TPC-B-like
# transactions — an account, a teller and the one branch updated, a history row inserted
# (CAPGATE_DRAIN_TXNS, default 10,000) — and, on loopback, the chaos suite's mix of inserts and
# hot-row increments whose operations alternate in every page (decision 0026). Prints row
# changes per second and per replica round trip. The servers are the tests' own
# (src/testbed), started and removed by the run.
#
#   benches/drain.sh                     # release build
#   CAPGATE_DRAIN_PROFILE=debug benches/drain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
[ "${CAPGATE_DRAIN_PROFILE:-release}" = release ] && profile=(--release)
cargo test "${profile[@]}" --test shipper -- --ignored --nocapture --test-threads=1 measure_drain 2>&1 | grep -oE 'drain (loopback|50 ms RTT) .*|test result.*'
