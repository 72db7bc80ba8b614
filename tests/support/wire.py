"""A cable with latency and loss in user space: what `tc qdisc ... netem delay D loss L` on both ends of a veth pair
does, for kernels built without sch_netem (tests/support/netns.py uses it when `tc ... netem` is refused).

    python -m tests.support.wire --end NETNS:TAP --end NETNS:TAP --delay-ms 100 --loss-pct 1 [--seed N]

Each `--end` is a TAP device this process makes in that network namespace (it enters each in turn: setns applies
to the calling thread, and this process has one). It prints `ready` once both exist; the caller then gives them
addresses or bridge ports with `ip`, as it would a veth pair. Every Ethernet frame read from one end is dropped with
probability `loss` or written to the other end `delay` later, in order; so a round trip takes twice the delay, as
with netem on both ends. The devices vanish when this process exits.

Why no library: making a TAP device is one open and one ioctl, and each end must be made after a setns into its
namespace, which a TUN/TAP wrapper would not save; the rest (a heap of due frames) is the emulation itself.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import itertools
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
    finally:
        os.close(fd)


def open_tap(netns: str, name: str) -> int:
    """A TAP device `name` in `netns` (made by this call, gone when the descriptor closes)."""
    enter(netns)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def carry(ends: tuple[int, int], delay_s: float, loss: float, rng: random.Random) -> None:
    """Move frames between the two ends until killed."""
    other = {ends[0]: ends[1], ends[1]: ends[0]}
    due: list[tuple[float, int, int, bytes]] = []  # (when, order, to, frame)
    order = itertools.count()
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        readable, _, _ = select.select(list(ends), [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if rng.random() >= loss:
                    heapq.heappush(due, (now + delay_s, next(order), other[fd], frame))
        while due and due[0][0] <= now:
            _, _, to, frame = heapq.heappop(due)
            try:
                os.write(to, frame)
            except OSError:
                pass  # the end is down (a link cut, or the caller tearing down): the frame is lost, as on a cable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--end", action="append", required=True, help="NETNS:TAP, twice")
    parser.add_argument("--delay-ms", type=float, required=True, help="one way, each direction")
    parser.add_argument("--loss-pct", type=float, default=0.0, help="frames dropped, each direction")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if len(args.end) != 2:
        parser.error("--end must be given twice")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    a, b = (open_tap(*end.split(":", 1)) for end in args.end)
    print("ready", flush=True)
    carry((a, b), args.delay_ms / 1000, args.loss_pct / 100, random.Random(args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
