"""Login timing: unknown mobile against wrong password, through user-web.

Sends N logins of each kind, interleaved in a shuffled order (so drift on a noisy machine hits
both alike, and user-web's round-robin does not pin each kind to one user-srv instance), over
one keep-alive connection each, and prints the latency distribution of both side by side
with the ratio of their medians. Both must answer 401 with the same body; the medians must
be within 10 % of each other, or it exits 1.

Usage: login_timing.py BASE_URL KNOWN_MOBILE [N]
"""

import http.client
import json
import random
import statistics
import sys
import time
from urllib.parse import urlparse


def main() -> int:
    base, known = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    url = urlparse(base)
    kinds = {
        "unknown mobile": {"mobile": "13999999999", "password": "some-password"},
        "wrong password": {"mobile": known, "password": "some-password"},
    }
    conns = {k: http.client.HTTPConnection(url.hostname, url.port, timeout=10) for k in kinds}
    times = {k: [] for k in kinds}
    bodies = {k: set() for k in kinds}
    order = list(kinds)
    shuffle = random.Random(1).shuffle
    for i in range(n + 20):
        shuffle(order)
        for kind in order:
            creds = kinds[kind]
            body = json.dumps(creds)
            start = time.perf_counter()
            conns[kind].request("POST", "/u/v1/user/pwd_login", body,
                                {"content-type": "application/json"})
            response = conns[kind].getresponse()
            answer = response.read()
            elapsed = time.perf_counter() - start
            if response.status != 401:
                print(f"{kind}: expected 401, got {response.status} {answer!r}")
                return 1
            bodies[kind].add(answer)
            if i >= 20:  # the first ones warm connections and caches
                times[kind].append(elapsed * 1000)
    print(f"{n} logins of each kind, interleaved in shuffled order, one keep-alive connection each (ms):")
    print(f"  {'':16} {'p10':>7} {'median':>7} {'p90':>7} {'mean':>7}")
    medians = {}
    for kind, t in times.items():
        q = statistics.quantiles(t, n=10)
        medians[kind] = statistics.median(t)
        print(f"  {kind:16} {q[0]:7.2f} {medians[kind]:7.2f} {q[-1]:7.2f} {statistics.fmean(t):7.2f}")
    ratio = medians["wrong password"] / medians["unknown mobile"]
    same = bodies["unknown mobile"] == bodies["wrong password"]
    print(f"  wrong password / unknown mobile, medians: {ratio:.3f}")
    print(f"  same 401 body for both: {'yes' if same else 'no'}")
    ok = same and 0.9 <= ratio <= 1.1
    print("within 10 %: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
