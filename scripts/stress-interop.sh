#!/usr/bin/env bash
# Run the interop tests (aiortc, aioice, headless Chromium) and the WebRTC I/O tests
# N times in a row while CPU hogs load every core, and count the failures.
#
#   scripts/stress-interop.sh [N] [HOGS] [-- extra pytest arguments]
#
# N (default 20) runs; HOGS (default: one per core) busy-loop processes at normal
# priority, killed when the script ends however it ends. Each run is bounded by
# STRESS_RUN_TIMEOUT seconds (default 300). Logs of failed runs stay in
# $STRESS_LOG_DIR (default: a temporary directory, printed at the end).
# PYTHON (default: .venv/bin/python, else python3) runs pytest; the tests run from this
# checkout (PYTHONPATH), so a shared venv with an editable install of another tree works.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
hogs=${2:-$(nproc)}
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
run_timeout=${STRESS_RUN_TIMEOUT:-300}
log_dir=${STRESS_LOG_DIR:-$(mktemp -d -t stress-interop-XXXXXX)}
mkdir -p "$log_dir"
tests=(tests/interop tests/webrtc/test_peer_connection.py tests/webrtc/test_early_dtls.py
       tests/webrtc/test_ice_io.py tests/webrtc/test_dtls_io.py tests/p2p/test_webrtc_transport.py)

hog_pids=()
run_pid=
stop_hogs() {
  [ -n "$run_pid" ] && kill "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
  for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null; done
  wait "${hog_pids[@]}" 2>/dev/null
  hog_pids=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM  # traps run between commands: the runs below are waited for
for _ in $(seq "$hogs"); do
  timeout $(( runs * run_timeout + 60 )) "$python" -c 'while True: pass' &
  hog_pids+=($!)
done

passed=0
started=$(date +%s)
for i in $(seq "$runs"); do
  log="$log_dir/run-$i.log"
  t0=$(date +%s)
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout "$run_timeout" \
    "$python" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@" >"$log" 2>&1 &
  run_pid=$!
  wait "$run_pid"
  status=$?
  run_pid=
  if [ "$status" = 0 ]; then
    passed=$((passed + 1))
    rm -f "$log"
    echo "run $i/$runs: passed ($(( $(date +%s) - t0 )) s)"
  else
    echo "run $i/$runs: FAILED ($(( $(date +%s) - t0 )) s): $(grep -E '^FAILED|^ERROR' "$log" | tr '\n' ' ' | cut -c1-300) log: $log"
  fi
done
stop_hogs
echo "stress-interop: $passed/$runs runs passed with $hogs CPU hogs in $(( $(date +%s) - started )) s (logs of failures: $log_dir)"
[ "$passed" = "$runs" ]
