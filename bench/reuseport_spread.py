"""How evenly the kernel's SO_REUSEPORT spreads a burst of connections over processes.

    python -m bench.reuseport_spread [--trials 30] [--connections 16] [--processes 2]

Each trial starts the processes, each listening on its own SO_REUSEPORT socket on one
free loopback port, opens the connections at once (as wrk does) and counts what each
process accepted. The server's ConnectionCounts give an even split by construction;
this measures what the kernel alone would give.
"""

import argparse
import multiprocessing
import socket
import statistics
import sys
from multiprocessing.synchronize import Event


def _accept_all(port: int, counts: "multiprocessing.Queue[int]", ready: Event) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.settimeout(0.5)
    ready.set()
    accepted = []
    try:
        while True:
            accepted.append(listener.accept()[0])
    except TimeoutError:
        counts.put(len(accepted))


def trial(connections: int, processes: int) -> list[int]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    counts: multiprocessing.Queue[int] = multiprocessing.Queue()
    ready = [multiprocessing.Event() for _ in range(processes)]
    workers = [
        multiprocessing.Process(target=_accept_all, args=(port, counts, event)) for event in ready
    ]
    for worker in workers:
        worker.start()
    for event in ready:
        event.wait(10)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    split = sorted(counts.get(timeout=10) for _ in workers)
    for worker in workers:
        worker.join(10)
    for client in clients:
        client.close()
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    largest = [trial(args.connections, args.processes)[-1] for _ in range(args.trials)]
    even = -(-args.connections // args.processes)
    print(
        f"largest share of {args.connections} connections over {args.processes} processes, "
        f"{args.trials} trials: median {statistics.median(largest)}, max {max(largest)}; "
        f"even ({even}) in {sum(n == even for n in largest)}, "
        f">= {even + 3} in {sum(n >= even + 3 for n in largest)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
