# Long-poll fan-out for bench/policy-sync/measure.sh: parks N requests for the next version,
# commits one policy straight into Postgres (psql), and reports when each request was answered.
import sys, threading, time, http.client, json, subprocess, statistics
port, token, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def latest():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/v1/bundles/default?wait=0", headers={"authorization": "Bearer " + token})
    r = c.getresponse(); r.read(); return int(r.getheader("x-portcullis-version"))
def psql(sql):
    subprocess.run(["psql", url, "-qc", sql], check=True, stdout=subprocess.DEVNULL)
for waiters in (1, 1, 1, 1, 1, 100, 500):
    v = latest()
    done = []
    def wait():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", f"/v1/bundles/default?after={v}&wait=30", headers={"authorization": "Bearer " + token})
        r = c.getresponse(); body = r.read()
        done.append((time.monotonic(), r.status, len(body)))
    ts = [threading.Thread(target=wait) for _ in range(waiters)]
    for t in ts: t.start()
    time.sleep(1.0 + waiters / 200)
    psql(f"INSERT INTO policies (tenant, id, text) VALUES ('default', 'x{time.time_ns()}', 'permit(principal, action, resource);')")
    committed = time.monotonic()
    for t in ts: t.join()
    lat = sorted((d[0] - committed) * 1000 for d in done)
    assert all(d[1] == 200 for d in done), done[:3]
    print(f"{waiters} waiter(s): answered {lat[0]:.1f}–{lat[-1]:.1f} ms after the commit (median {statistics.median(lat):.1f} ms), document {done[0][2]} bytes")
