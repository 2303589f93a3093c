#!/usr/bin/env python3
"""The machine's own latency floor, for reading the alert-latency figures of BENCHMARKS.md.

1. Wake-up jitter: how late a thread that sleeps 0.5 ms wakes up, on an otherwise idle machine
   (scheduler and timer; on a VM, also the host's scheduling of the vCPUs). Every hop of an alert
   (request decoding, WAL writer, subscriber's connection) is such a wake-up.
2. fdatasync at the WAL's pattern under the alert benchmark: 1,000 appends of 10 kB per second to
   one file in the WAL directory, each followed by fdatasync.

Usage: bench/jitter.py [--dir DIR] [--seconds N]
"""

import argparse
import os
import tempfile
import time


def percentiles(name, samples):
    samples = sorted(samples)
    n = len(samples)

    def at(q):
        return samples[min(n - 1, int(n * q))] * 1e3

    print(
        f"{name}: n={n} p50 {at(0.5):.3f} ms · p99 {at(0.99):.3f} ms · "
        f"p999 {at(0.999):.3f} ms · max {samples[-1] * 1e3:.3f} ms"
    )


def wakeups(seconds):
    late = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        time.sleep(0.0005)
        late.append(time.perf_counter() - start - 0.0005)
    percentiles("wake-up lateness after a 0.5 ms sleep", late)


def fdatasyncs(directory, seconds, rate=1000, size=10_000):
    fd, path = tempfile.mkstemp(dir=directory, suffix=".jitter")
    try:
        payload = os.urandom(size)
        took = []
        start = time.perf_counter()
        for i in range(seconds * rate):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = time.perf_counter()
            os.write(fd, payload)
            os.fdatasync(fd)
            took.append(time.perf_counter() - t)
        percentiles(f"append {size} B + fdatasync at {rate}/s", took)
    finally:
        os.close(fd)
        os.remove(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="a directory on the WAL's disk")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    wakeups(args.seconds)
    fdatasyncs(args.dir, args.seconds)


if __name__ == "__main__":
    main()
