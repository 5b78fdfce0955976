#!/usr/bin/env python3
"""Peak memory of a `spindle serve` given N large JSON bodies at once (issue #12, finding 10).

Starts the given binary (`--auth local`, a fresh SQLite file, port 0), sends N concurrent
`POST /threads` whose body is BYTES of JSON (metadata holding one array of small numbers, the
shape that costs most to parse), waits for every answer, and prints the server's resident
memory before and its peak (VmHWM) after.

    bench/tools/large-bodies-rss.py target/release/spindle [N=8] [BYTES=10000000] [-- serve flags]
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading


def kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def body(size):
    head, tail = b'{"metadata": {"x": [', b"0]}}"
    count = (size - len(head) - len(tail)) // 2
    return head + b"0," * count + tail


def post(port, payload, out, i):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /threads HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
        + payload
    )
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    out[i] = data[:12].decode(errors="replace")


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    binary = args[0]
    n = int(args[1]) if len(args) > 1 else 8
    size = int(args[2]) if len(args) > 2 else 10_000_000
    data = tempfile.mkdtemp(prefix="spindle-rss-")
    server = subprocess.Popen(
        [binary, "--log", "warn", "serve", "--listen", "127.0.0.1:0", "--data-dir", data, *extra],
        stdout=subprocess.PIPE,
    )
    try:
        line = server.stdout.readline().decode()
        port = int(line.rsplit(":", 1)[1].strip())
        payload = body(size)
        before = kib(server.pid, "VmRSS")
        out = [None] * n
        threads = [threading.Thread(target=post, args=(port, payload, out, i)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = kib(server.pid, "VmHWM")
        print(
            f"{n} bodies of {len(payload)} bytes at once: RSS before {before // 1024} MiB, "
            f"peak {peak // 1024} MiB; answers {sorted(set(out))}"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
