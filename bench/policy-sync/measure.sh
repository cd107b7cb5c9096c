#!/usr/bin/env bash
# policy-sync at scale, optimised build (`--profile server`), on a private Postgres cluster:
# how long storing 1,000 and 10,000 policies takes through the CLI, and how long after a commit
# 1, 100 and 500 parked long-poll requests receive the new version of a 10,000-policy tenant.
# Needs root (the cluster runs as `postgres`), Debian's postgresql and python3.
# Usage: bench/policy-sync/measure.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/target}"
source "$(dirname "$0")/setup.sh"
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
