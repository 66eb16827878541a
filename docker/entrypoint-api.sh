#!/bin/sh
# The API container: `bnrank serve --no-worker` (workers run in their own containers). Every setting comes
# from BNRANK_* variables; arguments are appended (e.g. `--access-log`). exec: uvicorn gets SIGTERM itself
# and shuts down gracefully.
set -eu

exec "${BNRANK_BIN:-bnrank}" serve --no-worker \
    --host "${BNRANK_API_HOST:-0.0.0.0}" \
    --port "${BNRANK_API_PORT:-8000}" \
    "$@"
