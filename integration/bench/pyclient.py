"""Celery's own Python client, measured by integration/bench.

Usage: python3 pyclient.py BROKER_URL QUEUE N WINDOW SEQ

Sends tasks.echo(i) with app.send_task(name, args, queue=QUEUE) and reads
the results with .get() over rpc://, first N of them with at most WINDOW
outstanding (a sliding window, oldest awaited first), then SEQ sequential
round trips. Prints one JSON object: per_s, p50_ms, p99_ms,
cpu_us_per_task (this process, throughput run), stalls and stall_s (gets in the
throughput run that took 0.5 s or more, and their total time),
per_s_without_stalls (the throughput with that time taken out), n, seq.
"""

import collections
import json
import sys
import time

from celery import Celery


def main():
    url, queue = sys.argv[1], sys.argv[2]
    n, window, seq = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    app = Celery("stalkbench", broker=url, backend="rpc://")
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=False,
    )

    def send(i):
        return app.send_task("tasks.echo", args=(i,), queue=queue)

    stalls = [0, 0.0]  # count, seconds

    def get(r):
        # A get() whose result had already arrived can wait for the rpc
        # backend's 1 s drain timeout; count those, they are Celery's.
        t = time.perf_counter()
        r.get(timeout=60)
        d = time.perf_counter() - t
        if d >= 0.5:
            stalls[0] += 1
            stalls[1] += d

    def run_window(count):
        out = collections.deque()
        start = time.perf_counter()
        for i in range(count):
            if len(out) >= window:
                get(out.popleft())
            out.append(send(i))
        while out:
            get(out.popleft())
        el = time.perf_counter() - start
        return count / el, count / max(el - stalls[1], 1e-9)

    run_window(min(200, n))  # warm-up: connections, declarations
    stalls[0], stalls[1] = 0, 0.0
    cpu0 = time.process_time()
    per_s, per_s_no_stalls = run_window(n)
    cpu_us = (time.process_time() - cpu0) / n * 1e6
    window_stalls = stalls[0]

    lat = []
    for i in range(seq):
        t = time.perf_counter()
        send(i).get(timeout=60)
        lat.append(time.perf_counter() - t)
    lat.sort()

    def pct(p):
        return lat[int(p * (len(lat) - 1) + 0.5)] * 1000 if lat else None

    print(json.dumps({"per_s": per_s, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                      "cpu_us_per_task": cpu_us, "stalls": window_stalls, "stall_s": stalls[1],
                      "per_s_without_stalls": per_s_no_stalls, "n": n, "seq": seq}))


if __name__ == "__main__":
    main()
