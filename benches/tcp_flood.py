#!/usr/bin/env python3
"""A flood of silent connections against the gt06 port of a real engine, and what a real
device sees meanwhile. Same run, two phases on one engine: idle (the baseline), then with the
flood going on. For BENCHMARKS.md, "4G TCP: a flood of silent connections".

    python3 benches/tcp_flood.py [path/to/anxin] [--open-files 1024] [--seconds 10]

The engine runs with its own data directory, an embedded broker, SQLite, only the gt06
listener, and RLIMIT_NOFILE set to --open-files (soft and hard). The flood comes from
127.0.1.2–127.0.1.101 (100 addresses), as fast as the script can connect, holding at most
5 000 sockets on its side; the device is 127.0.0.1. Per phase: fresh connection + login round
trips (connect → login answer), status-frame round trips on one logged-in connection (10 per
second: the engine throttles a connection above 20 frames/s) and `GET /readyz` latencies.
"""

import argparse
import asyncio
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

IMEI_LOGIN = bytes.fromhex("78780d01086471700328358100093f040d0a")  # PROTOCOLS.md §3 example


def crc_x25(data: bytes) -> int:
    """CRC-16/X-25 (PROTOCOLS.md §3)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def gt06(proto: int, content: bytes, serial: int) -> bytes:
    body = bytes([1 + len(content) + 4, proto]) + content + serial.to_bytes(2, "big")
    return b"\x78\x78" + body + crc_x25(body).to_bytes(2, "big") + b"\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(name, xs):
    ms = [x * 1000 for x in xs]
    return f"{name}: n={len(ms)} p50={pct(ms, 50):.2f} ms p99={pct(ms, 99):.2f} ms max={max(ms):.2f} ms"


def metrics(http):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("anxin_tcp_"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


async def login_once(port):
    t = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(IMEI_LOGIN)
    await w.drain()
    await asyncio.wait_for(r.readexactly(10), 10)
    dt = time.perf_counter() - t
    w.close()
    return dt


async def device_phase(port, http, seconds):
    logins = [await login_once(port) for _ in range(20)]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(IMEI_LOGIN)
    await w.drain()
    await r.readexactly(10)
    rtts, readyz = [], []
    serial = 100
    end = time.perf_counter() + seconds
    loop = asyncio.get_running_loop()
    while time.perf_counter() < end:
        serial += 1
        t = time.perf_counter()
        w.write(gt06(0x13, bytes([0x44, 0x06, 0x04, 0x00, 0x02]), serial))
        await w.drain()
        await asyncio.wait_for(r.readexactly(10), 10)
        rtts.append(time.perf_counter() - t)
        if serial % 10 == 0:
            t = time.perf_counter()
            code = await loop.run_in_executor(
                None, lambda: urllib.request.urlopen(f"http://{http}/readyz", timeout=10).status
            )
            assert code == 200, code
            readyz.append(time.perf_counter() - t)
        await asyncio.sleep(0.1)
    w.close()
    return logins, rtts, readyz


async def flood(port, stop, counter):
    held = []
    i = 0
    while not stop.is_set():
        src = f"127.0.1.{2 + i % 100}"
        i += 1
        try:
            s = socket.socket()
            s.setblocking(False)
            s.bind((src, 0))
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
            held.append(s)
            counter[0] += 1
        except OSError:
            s.close()
            counter[1] += 1
            await asyncio.sleep(0)
        if len(held) > 5000:
            held.pop(0).close()
    for s in held:
        s.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("anxin", nargs="?", default="target/release/anxin")
    ap.add_argument("--open-files", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    port, http, mqtt = free_port(), f"127.0.0.1:{free_port()}", free_port()
    data = tempfile.mkdtemp(prefix="anxin-flood-")
    env = dict(
        os.environ,
        ANXIN_DATA_DIR=data,
        ANXIN_MQTT_URL=f"embedded://127.0.0.1:{mqtt}",
        ANXIN_HTTP_ADDR=http,
        ANXIN_TCP_LISTEN=f"gt06=127.0.0.1:{port},watch=off,jt808=off,trv=off",
        ANXIN_ADMIN_TOKEN="flood-" + secrets.token_hex(8),
        ANXIN_UNKNOWN_DEVICES="accept",
        RUST_LOG="warn",
    )
    n = a.open_files

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    log = open(os.path.join(data, "engine.log"), "w")
    engine = subprocess.Popen(
        [a.anxin, "run", "--config", "config/anxin.toml"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=limit,
    )
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"http://{http}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        cap = metrics(http).get("anxin_tcp_connections_cap")
        print(f"engine open files {n}, device connection cap {cap}")

        idle = await device_phase(port, http, a.seconds)
        stop, counter = asyncio.Event(), [0, 0]
        task = asyncio.create_task(flood(port, stop, counter))
        await asyncio.sleep(2)  # let the flood fill the engine first
        before = counter[0]
        t0 = time.perf_counter()
        busy = await device_phase(port, http, a.seconds)
        rate = (counter[0] - before) / (time.perf_counter() - t0)
        stop.set()
        await task
        for name, (logins, rtts, readyz) in (("idle (baseline)", idle), ("during the flood", busy)):
            print(f"-- {name}")
            print("  " + summary("connect + login", logins))
            print("  " + summary("status frame round trip", rtts))
            print("  " + summary("GET /readyz", readyz))
        print(f"flood: {counter[0]} connections made ({rate:.0f}/s while measured), {counter[1]} failed")
        m = metrics(http)
        for k in sorted(m):
            if any(w in k for w in ("evicted", "refused", "accept_errors", "login_timeouts", "connections{")):
                print(f"  {k} {m[k]:.0f}")
    finally:
        engine.terminate()
        engine.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
