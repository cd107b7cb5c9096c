# Sourced by measure.sh and limits.sh: builds policy-sync (`--profile server`), starts a private
# Postgres cluster on a free loopback port and the service against it (extra `serve` flags in
# SERVE_ARGS), and stops both on exit. Sets BIN, D, HERE, HPORT, FT (a filter token), SRV.
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
PORTCULLIS_LOG=${PORTCULLIS_LOG:-warn} $BIN serve --listen 127.0.0.1:$HPORT --signing-key "$D/k" --pool-size 32 ${SERVE_ARGS:-} >/dev/null 2>"${SERVE_LOG:-/dev/null}" & SRV=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:$HPORT/readyz >/dev/null && break; sleep 0.1; done
