#!/usr/bin/env bash
# policy-sync under load, optimised build, on a private Postgres cluster: 5,000 long-poll
# requests parked at once (the service's memory before and while they wait, and how long after
# one commit every one of them is answered), then the decision-log ingest rate (rows per second
# into Postgres, counted there). Needs root (the cluster runs as `postgres`), Debian's
# postgresql, curl and python3.
# Usage: bench/policy-sync/limits.sh [WAITERS [PER_SECOND]]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/target}"
# One socket per parked request, on both sides: as many descriptors as the hard limit allows.
ulimit -n "$(ulimit -Hn)"
source bench/policy-sync/setup.sh
echo 'permit(principal, action == Action::"GET", resource);' > "$D/base.cedar"
$BIN policy put "$D/base.cedar" --id base >/dev/null
sleep 1
python3 "$HERE/abuse.py" "$HPORT" "$FT" "$PORTCULLIS_DATABASE_URL" "$SRV" "${1:-5000}" "${2:-1000}"
