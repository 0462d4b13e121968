#!/usr/bin/env python3
"""A WAN link between two testbed routers: two tap devices, one in each router's network namespace,
with every frame held for --delay-ms before it is passed on (this kernel has no netem). Frames keep
their order. The rate cap is tc tbf on the taps (testbed.sh). Stops on SIGTERM; the taps vanish with it."""
import argparse, collections, ctypes, fcntl, os, select, signal, struct, sys, time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def enter(ns):
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {ns}")
    os.close(fd)


def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns-a", required=True)
    ap.add_argument("--tap-a", required=True)
    ap.add_argument("--ns-b", required=True)
    ap.add_argument("--tap-b", required=True)
    ap.add_argument("--delay-ms", type=float, default=15.0)
    ap.add_argument("--pidfile")
    args = ap.parse_args()
    enter(args.ns_a)
    a = tap(args.tap_a)
    enter(args.ns_b)
    b = tap(args.tap_b)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    delay = args.delay_ms / 1000.0
    queues = {a: collections.deque(), b: collections.deque()}  # frames waiting to be written to that fd
    other = {a: b, b: a}
    while True:
        now = time.monotonic()
        for fd, q in queues.items():
            while q and q[0][0] <= now:
                try:
                    os.write(fd, q.popleft()[1])
                except OSError:
                    pass  # link down: drop the frame, like a wire would
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - time.monotonic()) if due else 1.0
        readable, _, _ = select.select([a, b], [], [], timeout)
        for fd in readable:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                queues[other[fd]].append((time.monotonic() + delay, frame))


if __name__ == "__main__":
    main()
