# Load for bench/policy-sync/limits.sh: parks N long-poll requests at once (asyncio, one
# connection each), reads the service's resident memory before and while they wait, commits
# one policy straight into Postgres and times until every request is answered 200; then posts
# decision-log batches from several clients at once and reports rows per second as Postgres
# counts them.
import asyncio, json, subprocess, sys, time

port, token, url, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
waiters = int(sys.argv[5]) if len(sys.argv) > 5 else 5000
ramp = int(sys.argv[6]) if len(sys.argv) > 6 else 1000
HEAD = "Host: 127.0.0.1\r\nAuthorization: Bearer " + token + "\r\n"

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS for the service")

def psql(sql):
    out = subprocess.run(["psql", url, "-qAtc", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()

async def request(method, path, body=b"", extra=""):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"{method} {path} HTTP/1.1\r\n{HEAD}{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await w.drain()
    data = await r.read()
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode(errors="replace"), rest

async def latest():
    s, head, _ = await request("GET", "/v1/bundles/default?wait=0")
    assert s == 200, head
    return int([l for l in head.split("\r\n") if l.lower().startswith("x-portcullis-version")][0].split(":")[1])

def waiting_gauge():
    out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True).stdout
    return int(float([l for l in out.splitlines() if l.startswith("policy_sync_long_poll_waiters ")][0].split()[1]))

async def fan_out():
    v = await latest()
    before = rss_mib()
    answered = []
    async def wait():
        s, _, body = await request("GET", f"/v1/bundles/default?after={v}&wait=60")
        answered.append((time.monotonic(), s, len(body)))
    # Arriving as a fleet's jittered reconnects do: `ramp` requests per second. All at once,
    # they would queue for the connection pool (every request authenticates in Postgres)
    # and most would be refused with 503 and Retry-After.
    start = time.monotonic()
    tasks = []
    for i in range(0, waiters, max(1, ramp // 10)):
        tasks += [asyncio.create_task(wait()) for _ in range(min(ramp // 10, waiters - i))]
        await asyncio.sleep(0.1)
    while waiting_gauge() < waiters:
        if time.monotonic() - start > 60:
            from collections import Counter
            raise SystemExit(f"only {waiting_gauge()} of {waiters} parked; answered meanwhile: "
                             f"{dict(Counter(a[1] for a in answered))}")
        await asyncio.sleep(0.2)
    parked_in = time.monotonic() - start
    await asyncio.sleep(1)
    during = rss_mib()
    psql(f"INSERT INTO policies (tenant, id, text) VALUES ('default', 'x{time.time_ns()}', 'permit(principal, action, resource);')")
    committed = time.monotonic()
    await asyncio.gather(*tasks)
    bad = [a for a in answered if a[1] != 200]
    assert not bad, bad[:3]
    lat = sorted((a[0] - committed) * 1000 for a in answered)
    print(f"{waiters} parked long-polls arriving at {ramp}/s: all parked in {parked_in:.1f} s; service RSS {before:.1f} MiB before, "
          f"{during:.1f} MiB while they waited (+{(during - before) * 1024 / waiters:.1f} KiB each)")
    print(f"after one commit: first answered {lat[0]:.0f} ms, median {lat[len(lat) // 2]:.0f} ms, "
          f"last {lat[-1]:.0f} ms (every answer 200, {answered[0][2]} bytes)")

async def ingest(clients=4, batches=50, per_batch=1000):
    now = time.time()
    entry = {"time": now, "decision": "allow", "principal": "User::\"bob\"", "action": "Action::\"GET\"",
             "resource": "Path::\"/api/x\"", "policies": ["read"], "version": 2, "filterId": "bench"}
    body = json.dumps({"decisions": [dict(entry, time=now - i / 1000) for i in range(per_batch)]}).encode()
    before = int(psql("SELECT count(*) FROM decision_logs"))
    async def client():
        for _ in range(batches):
            s, head, _ = await request("POST", "/v1/decisions", body, "Content-Type: application/json\r\n")
            assert s in (200, 201, 202, 204), head
    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    took = time.monotonic() - start
    rows = int(psql("SELECT count(*) FROM decision_logs")) - before
    assert rows == clients * batches * per_batch, rows
    print(f"decision-log ingest: {rows} rows in {clients * batches} batches of {per_batch} from {clients} clients "
          f"in {took:.2f} s: {rows / took:,.0f} rows/s")

asyncio.run(fan_out())
asyncio.run(ingest())
