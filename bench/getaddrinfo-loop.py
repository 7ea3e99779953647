#!/usr/bin/python3
"""glibc's getaddrinfo() in a loop, as a program resolving a machine name would call it (python's
socket.getaddrinfo is a thin wrapper: the name goes to glibc as bytes, nothing is cached in between).

usage: getaddrinfo-loop.py NAME COUNT WARMUP

Prints one JSON object: the addresses of the first answer, the number of failed calls, and the
latency of each of the COUNT timed calls in microseconds (after WARMUP untimed calls).
"""
import json
import socket
import sys
import time

name = sys.argv[1].encode()
count, warmup = int(sys.argv[2]), int(sys.argv[3])


def lookup():
    # AF_UNSPEC + SOCK_STREAM: one tuple per address, both families, as ssh or curl ask
    return socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)


first = lookup()
addresses = [ai[4][0] + ("%" + str(ai[4][3]) if ai[0] == socket.AF_INET6 and ai[4][3] else "") for ai in first]
errors = 0
for _ in range(warmup):
    lookup()
latencies = []
clock = time.perf_counter_ns
for _ in range(count):
    t0 = clock()
    try:
        lookup()
    except OSError:
        errors += 1
    latencies.append((clock() - t0) / 1000)
print(json.dumps({"addresses": addresses, "errors": errors, "latencies_us": latencies}))
