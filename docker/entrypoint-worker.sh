#!/bin/sh
# A worker container: `bnrank worker` (a Celery worker on BNRANK_QUEUE). Every setting comes from BNRANK_*
# variables; BNRANK_WORKER_CONCURRENCY and BNRANK_WORKER_POOL are also spelled out as options so they show in
# `ps`. Arguments are appended and win (e.g. `--loglevel DEBUG`). exec: Celery gets SIGTERM itself, and a
# SIGTERM is its warm shutdown: the running task finishes (within the container's stop grace period).
set -eu

if [ -n "${BNRANK_WORKER_POOL:-}" ]; then
    set -- --pool "$BNRANK_WORKER_POOL" "$@"
fi
if [ -n "${BNRANK_WORKER_CONCURRENCY:-}" ]; then
    set -- --concurrency "$BNRANK_WORKER_CONCURRENCY" "$@"
fi
exec "${BNRANK_BIN:-bnrank}" worker "$@"
