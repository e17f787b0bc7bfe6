"""A Python program with threads and a large heap, for checkpoint/restore tests.

Writes STATE_DIR/pyheap.ready with its pid and the sha256 of its heap; on
SIGUSR1 recomputes the digest and writes pyheap.result with it and with the
worker counters (which must keep increasing across a restore).
"""

import hashlib
import os
import random
import signal
import sys
import threading
import time

state_dir = sys.argv[1] if len(sys.argv) > 1 else "/root"
mib = int(sys.argv[2]) if len(sys.argv) > 2 else 128

rng = random.Random(1234)
blocks = [rng.randbytes(1 << 20) for _ in range(mib)]
counters = [0] * 4
lock = threading.Lock()


def digest() -> str:
    h = hashlib.sha256()
    for b in blocks:
        h.update(b)
    return h.hexdigest()


def worker(i: int) -> None:
    local = 0
    while True:
        local += 1
        with lock:
            counters[i] = local
        time.sleep(0.01)


for i in range(4):
    threading.Thread(target=worker, args=(i,), daemon=True).start()

report = threading.Event()
signal.signal(signal.SIGUSR1, lambda s, f: report.set())
first = digest()
with open(os.path.join(state_dir, "pyheap.ready.tmp"), "w") as f:
    f.write(f"{os.getpid()} {first}\n")
os.rename(os.path.join(state_dir, "pyheap.ready.tmp"), os.path.join(state_dir, "pyheap.ready"))
while True:
    report.wait()
    report.clear()
    with lock:
        snap = list(counters)
    with open(os.path.join(state_dir, "pyheap.result.tmp"), "w") as f:
        f.write(f"{digest()} {' '.join(map(str, snap))} {time.monotonic()}\n")
    os.rename(
        os.path.join(state_dir, "pyheap.result.tmp"), os.path.join(state_dir, "pyheap.result")
    )
