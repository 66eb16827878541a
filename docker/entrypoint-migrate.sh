#!/bin/sh
# The one-shot migration (compose's `migrate` service): bring the database named by BNRANK_DATABASE_URL to
# the newest schema revision, then exit. Arguments are passed on (`--revision REV`).
#
# A database that is still starting makes `bnrank migrate` fail at once; it is retried for up to
# BNRANK_DB_WAIT_S seconds (default 0: no retry; compose already waits for postgres to be healthy). The last
# try is exec'd, so its exit status and its signals are the container's.
set -eu

bin="${BNRANK_BIN:-bnrank}"
wait_s="${BNRANK_DB_WAIT_S:-0}"
retry_s="${BNRANK_DB_RETRY_S:-2}"

trap 'exit 143' TERM
trap 'exit 130' INT

deadline=$(( $(date +%s) + wait_s ))
while [ "$(( $(date +%s) + retry_s ))" -le "$deadline" ]; do
    if "$bin" migrate "$@"; then
        exit 0
    fi
    echo "entrypoint-migrate: the database is not ready; retrying in ${retry_s}s" >&2
    sleep "$retry_s"
done
exec "$bin" migrate "$@"
