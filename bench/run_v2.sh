#!/usr/bin/env bash
# Benchmark v2, detached and resumable: data, zoo (two processes), then ground truth and proxies side by side.
#
#   setsid nohup bash bench/run_v2.sh > /dev/null 2>&1 &
#
# It runs from a snapshot of the checkout's HEAD (so a later merge or checkout in the working tree cannot
# change the code under a run that lasts many hours) and writes raw JSON into the checkout's
# bench/results/v2/; logs and the snapshot live in the cache ($BNRANK_BENCH_CACHE, ~/.cache/bnrank-bench).
# Every step skips what has already landed, so running it again resumes. One torch thread per process, nice 15:
# the ground truth and the proxies each from both ends of their run lists (four processes; each run is claimed with
# an flock, so two processes never make the same one, and whichever list is left at the end gets both cores).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${BNRANK_BENCH_CACHE:-$HOME/.cache/bnrank-bench}"
COMMIT="$(git -C "$REPO" rev-parse HEAD)"
SNAP="$CACHE/v2-code/$COMMIT"
LOGS="$CACHE/v2-logs"
mkdir -p "$LOGS"
if [ ! -f "$SNAP/.complete" ]; then
    rm -rf "$SNAP" && mkdir -p "$SNAP"
    git -C "$REPO" archive "$COMMIT" | tar -x -C "$SNAP"
    touch "$SNAP/.complete"
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 BNRANK_BENCH_CACHE="$CACHE" BNRANK_BENCH_COMMIT="$COMMIT"
PY=(nice -n 15 "$REPO/.venv/bin/python" "$SNAP/bench/benchmark_v2.py" --threads 1 --cache "$CACHE"
    --results "$REPO/bench/results/v2" --repo "$REPO")
echo "$(date -u +%FT%TZ) start $COMMIT (pid $$)" >> "$LOGS/run.log"
"${PY[@]}" --data >> "$LOGS/data.log" 2>&1
"${PY[@]}" --zoo --family unet3d >> "$LOGS/zoo-unet3d.log" 2>&1 &
a=$!
"${PY[@]}" --zoo --family nnunet --family controls >> "$LOGS/zoo-nnunet.log" 2>&1 &
b=$!
wait "$a"; wait "$b"  # each returns its process's status: a failed zoo stops the run here
"${PY[@]}" --ground-truth >> "$LOGS/ground-truth.log" 2>&1 &
a=$!
"${PY[@]}" --ground-truth --reverse >> "$LOGS/ground-truth-reverse.log" 2>&1 &
c=$!
"${PY[@]}" --proxies >> "$LOGS/proxies.log" 2>&1 &
b=$!
"${PY[@]}" --proxies --reverse >> "$LOGS/proxies-reverse.log" 2>&1 &
d=$!
echo "$(date -u +%FT%TZ) ground truth pids $a (forward) $c (reverse), proxies pids $b (forward) $d (reverse)" \
    >> "$LOGS/run.log"
wait "$a"; wait "$c"; wait "$b"; wait "$d"
echo "$(date -u +%FT%TZ) done" >> "$LOGS/run.log"
