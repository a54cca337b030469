#!/usr/bin/env python3
"""Time from exec to the first 200 from a readiness URL, RUNS times (bench/idle.sh, startup).

Usage: startup.py RUNS URL CMD [ARGS...]. Each run starts CMD, polls URL every 0.2 ms (a fresh
connection each time; a refused connection is retried at once), records the time of the first
200, then stops CMD with SIGTERM and waits for it. Prints each run's milliseconds, then
"median X".
"""
import socket
import subprocess
import sys
import time
import urllib.parse


def ready(host, port, path):
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main():
    runs, url, cmd = int(sys.argv[1]), urllib.parse.urlsplit(sys.argv[2]), sys.argv[3:]
    times = []
    for _ in range(runs):
        t0 = time.monotonic_ns()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not ready(url.hostname, url.port, url.path):
            if p.poll() is not None or time.monotonic_ns() - t0 > 10e9:
                sys.exit(f"{cmd[0]} never became ready")
            time.sleep(0.0002)
        times.append((time.monotonic_ns() - t0) / 1e6)
        p.terminate()
        p.wait()
    for t in times:
        print(f"{t:.1f}")
    print(f"median {sorted(times)[len(times) // 2]:.1f}")


if __name__ == "__main__":
    main()
