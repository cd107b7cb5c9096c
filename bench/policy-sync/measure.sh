#!/usr/bin/env bash
# policy-sync at scale, optimised build (`--profile server`), on a private Postgres cluster:
# how long storing 1,000 and 10,000 policies takes through the CLI, and how long after a commit
# 1, 100 and 500 parked long-poll requests receive the new version of a 10,000-policy tenant.
# Needs root (the cluster runs as `postgres`), Debian's postgresql and python3.
# Usage: bench/policy-sync/measure.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/target}"
cargo build --quiet --profile server -p policy-sync
BIN="$CARGO_TARGET_DIR/server/policy-sync"
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
HERE="$(pwd)/bench/policy-sync"
D=$(mktemp -d /tmp/psm.XXXX); chown postgres: "$D"
runuser -u postgres -- $PG/initdb -U postgres --auth=trust -D "$D/data" --no-sync >/dev/null
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
runuser -u postgres -- $PG/pg_ctl -w -D "$D/data" -l "$D/log" -o "-p $PORT -k $D -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
trap 'kill $SRV 2>/dev/null; runuser -u postgres -- $PG/pg_ctl -D "$D/data" -m fast stop >/dev/null; rm -rf "$D"' EXIT
runuser -u postgres -- $PG/createdb -h 127.0.0.1 -p $PORT -U postgres m
export PORTCULLIS_DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/m"
$BIN migrate >/dev/null
$BIN keygen --out "$D/k" >/dev/null
FT=$($BIN token create f --role filter)
HPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
PORTCULLIS_LOG=${PORTCULLIS_LOG:-warn} $BIN serve --listen 127.0.0.1:$HPORT --signing-key "$D/k" --pool-size 32 >/dev/null 2>"${SERVE_LOG:-/dev/null}" & SRV=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:$HPORT/readyz >/dev/null && break; sleep 0.1; done
for N in 1000 10000; do
  python3 - "$N" > "$D/p$N.cedar" <<'PY'
import sys
n=int(sys.argv[1])
print('@id("admins") permit(principal in Group::"admins", action, resource);')
for i in range(n-1):
    print(f'@id("u{i}-doc") permit(principal == User::"u{i}", action == Action::"GET", resource == Path::"/docs/{i}");')
PY
  s=$(date +%s.%N); $BIN policy put "$D/p$N.cedar" >/dev/null; e=$(date +%s.%N)
  echo "policy put of $N policies (CLI: parse, check the tenant, commit): $(python3 -c "print(round(($e-$s)*1000))") ms"
  sleep 2
done
curl -s http://127.0.0.1:$HPORT/metrics | grep -E "^policy_sync_publish_seconds_(sum|count)|^policy_sync_published_total"
python3 "$HERE/poll.py" $HPORT "$FT" "$PORTCULLIS_DATABASE_URL"
