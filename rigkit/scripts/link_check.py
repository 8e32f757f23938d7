"""Measure the interconnect before anything trusts it: the port up with carrier, its
negotiated speed against the expected one, its MTU and a do-not-fragment ping of the full
size to each peer, the RDMA devices behind it, and a short throughput test to each peer in
Gb/s against the expected rate.

    link_check.py --interface enp1s0f0np0 --address 192.168.100.11 --peer 192.168.100.12 \\
        --mtu 9000 [--link-gbps 200] [--expected-gbps 25] [--port 29517] [--seconds 3]

Every node runs it at once: each serves the throughput test to its declared peers (and no
one else: other sources are closed unread) while it measures its own link to each of them.
Bounded: the test sends for ``--seconds`` to each peer, at most MAX_STREAM_BYTES a stream,
and the whole run ends by its deadline. Traffic goes only to the declared peers, out of the
interconnect port (SO_BINDTODEVICE). Prints one JSON report; exits 1 when a check fails.
Runs as root on the node (raw ICMP); standard library only."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

NET = "/sys/class/net"
STREAMS = 4
CHUNK = 1 << 20
#: The most one stream sends or the listener reads from one connection (bytes).
MAX_STREAM_BYTES = 8 << 30
PING_TRIES = 3
PING_TIMEOUT = 1.0
# Linux socket options the socket module does not name on every Python.
SO_BINDTODEVICE = 25
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def bind_device(sock: socket.socket, interface: str) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping_df(interface: str, peer: str, mtu: int) -> bool:
    """An ICMP echo of exactly ``mtu`` bytes (IP header included), do-not-fragment, answered."""
    v6 = ipaddress.ip_address(peer).version == 6
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    payload = os.urandom(max(0, mtu - (40 if v6 else 20) - 8))
    ident = os.getpid() & 0xFFFF
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        bind_device(sock, interface)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.settimeout(PING_TIMEOUT)
        for seq in range(1, PING_TRIES + 1):
            kind, reply_kind = (128, 129) if v6 else (8, 0)
            header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
            # The kernel sums ICMPv6 itself (it knows the pseudo-header).
            csum = 0 if v6 else checksum(header + payload)
            packet = struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload
            try:
                sock.sendto(packet, (peer, 0))
            except OSError:
                return False  # EMSGSIZE: larger than this end's MTU
            deadline = time.monotonic() + PING_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    data, source = sock.recvfrom(mtu + 64)
                except OSError:
                    break
                icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
                if source[0] != peer or len(icmp) < 8:
                    continue
                r_kind, _, _, r_ident, r_seq = struct.unpack("!BBHHH", icmp[:8])
                if r_kind == reply_kind and r_ident == ident and r_seq == seq and icmp[8:] == payload:
                    return True
    return False


class Listener(threading.Thread):
    """Serves the throughput test to the declared peers until each has sent its streams or
    the deadline: reads (at most MAX_STREAM_BYTES a connection) and answers the count."""

    def __init__(self, interface: str, address: str, port: int, peers: list[str], deadline: float):
        super().__init__(daemon=True)
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bind_device(self.sock, interface)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.peers, self.deadline = set(peers), deadline
        self.remaining = {p: STREAMS for p in peers}

    def run(self) -> None:
        workers = []
        while any(self.remaining.values()) and time.monotonic() < self.deadline:
            self.sock.settimeout(max(0.1, self.deadline - time.monotonic()))
            try:
                conn, source = self.sock.accept()
            except OSError:
                break
            peer = str(ipaddress.ip_address(source[0]))
            if peer not in self.peers or not self.remaining[peer]:
                conn.close()  # not a declared peer: nothing is read
                continue
            self.remaining[peer] -= 1
            worker = threading.Thread(target=self.serve, args=(conn,), daemon=True)
            worker.start()
            workers.append(worker)
        for worker in workers:
            worker.join(max(0.0, self.deadline - time.monotonic()))
        self.sock.close()

    def serve(self, conn: socket.socket) -> None:
        total = 0
        with conn:
            conn.settimeout(max(0.1, self.deadline - time.monotonic()))
            buf = bytearray(CHUNK)
            try:
                while total < MAX_STREAM_BYTES:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    total += n
                conn.sendall(struct.pack("!Q", total))
            except OSError:
                pass


def _stream(interface: str, peer: str, port: int, seconds: float, deadline: float, out: list[int]) -> None:
    family = socket.AF_INET6 if ipaddress.ip_address(peer).version == 6 else socket.AF_INET
    while time.monotonic() < deadline:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            bind_device(sock, interface)
            sock.settimeout(2)
            sock.connect((peer, port))
            break
        except OSError:
            sock.close()
            time.sleep(0.2)  # the peer's listener is not up yet
    else:
        return
    chunk = b"\0" * CHUNK
    sent = 0
    with sock:
        try:
            end = min(time.monotonic() + seconds, deadline)
            while time.monotonic() < end and sent < MAX_STREAM_BYTES:
                sock.settimeout(max(0.1, end - time.monotonic()))
                try:
                    sock.sendall(chunk)
                except TimeoutError:
                    break  # a slow link fills the buffers: what did go through is measured
                sent += CHUNK
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            answer = b""
            while len(answer) < 8:
                part = sock.recv(8 - len(answer))
                if not part:
                    return
                answer += part
            out.append(struct.unpack("!Q", answer)[0])
        except OSError:
            return


def throughput(interface: str, peer: str, port: int, seconds: float, deadline: float) -> float | None:
    """Gb/s received by ``peer`` over STREAMS streams in about ``seconds``; None when the
    peer never answered."""
    received: list[int] = []
    start = time.monotonic()
    threads = [
        threading.Thread(target=_stream, args=(interface, peer, port, seconds, deadline, received))
        for _ in range(STREAMS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if len(received) < STREAMS:
        return None
    elapsed = time.monotonic() - start
    return round(sum(received) * 8 / elapsed / 1e9, 3)


def rdma_devices(interface: str) -> list[dict]:
    base = os.path.join(NET, interface, "device", "infiniband")
    devices = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        ports = os.path.join(base, name, "ports")
        states = (
            [read(os.path.join(ports, p, "state")) for p in sorted(os.listdir(ports))] if os.path.isdir(ports) else []
        )
        devices.append({"name": name, "states": states})
    return devices


def link_state(interface: str) -> dict | None:
    """The port's state, MTU and carrier as netlink reports them (``ip -j link``), or None."""
    try:
        out = subprocess.run(
            ["ip", "-j", "link", "show", "dev", interface], capture_output=True, text=True, timeout=5
        ).stdout
        (found,) = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    flags = found.get("flags") or []
    return {
        "operstate": (found.get("operstate") or "").lower(),
        "carrier": "1" if "LOWER_UP" in flags else "0",
        "mtu": found.get("mtu"),
    }


def check(args: argparse.Namespace) -> dict:
    iface = args.interface
    problems: list[str] = []
    seconds = args.seconds
    deadline = time.monotonic() + seconds * len(args.peer) + 15
    listener = None
    if args.expected_gbps is not None or args.measure:
        try:
            listener = Listener(iface, args.address, args.port, args.peer, deadline)
            listener.start()
        except OSError as exc:
            problems.append(
                f"interconnect {iface}: cannot serve the throughput test on {args.address}:{args.port}: {exc}"
            )
    report: dict = {"interface": iface, "peers": {}}
    netlink = link_state(iface)
    if netlink is not None:
        # Netlink sees this network namespace; a container's sysfs may show another's.
        operstate, carrier = netlink["operstate"], netlink["carrier"]
    else:
        operstate, carrier = read(f"{NET}/{iface}/operstate"), read(f"{NET}/{iface}/carrier")
    report["operstate"] = operstate
    if operstate is None:
        problems.append(f"interconnect {iface}: no such interface")
    elif operstate != "up" or carrier != "1":
        problems.append(f"interconnect {iface}: link {operstate} (carrier {carrier}), expected up")
    speed = read(f"{NET}/{iface}/speed")
    report["speed_gbps"] = int(speed) / 1000 if speed and speed.lstrip("-").isdigit() and int(speed) > 0 else None
    if args.link_gbps is not None and (report["speed_gbps"] or 0) < args.link_gbps:
        problems.append(
            f"interconnect {iface}: negotiated {report['speed_gbps'] or 0:g} Gb/s, expected {args.link_gbps:g} Gb/s"
        )
    mtu = str(netlink["mtu"]) if netlink is not None else read(f"{NET}/{iface}/mtu")
    report["mtu"] = int(mtu) if mtu else None
    if report["mtu"] != args.mtu:
        problems.append(f"interconnect {iface}: MTU {report['mtu']}, expected {args.mtu}")
    report["rdma"] = rdma_devices(iface) if operstate is not None else []
    for peer in args.peer:
        ok = operstate is not None and ping_df(iface, peer, args.mtu)
        report["peers"][peer] = {"mtu_ok": ok, "gbps": None}
        if not ok:
            problems.append(
                f"interconnect {iface} to {peer}: no answer to a {args.mtu}-byte do-not-fragment ping "
                f"(the MTU is below {args.mtu} somewhere on the link, or the peer is unreachable)"
            )
    if listener is not None:
        for peer in args.peer:
            gbps = throughput(iface, peer, args.port, seconds, deadline)
            report["peers"][peer]["gbps"] = gbps
            if gbps is None:
                problems.append(f"interconnect {iface} to {peer}: the throughput test got no answer")
            elif args.expected_gbps is not None and gbps < args.expected_gbps:
                problems.append(
                    f"interconnect {iface} to {peer}: {gbps:g} Gb/s measured, {args.expected_gbps:g} Gb/s expected"
                )
        # Serve the peers that are still measuring, until they are done or the deadline.
        listener.join(max(0.0, deadline - time.monotonic()))
    report["expected_gbps"] = args.expected_gbps
    report["link_gbps"] = args.link_gbps
    report["problems"] = problems
    report["ok"] = not problems
    return report


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interface", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--peer", action="append", required=True)
    p.add_argument("--mtu", type=int, required=True)
    p.add_argument("--link-gbps", type=float)
    p.add_argument("--expected-gbps", type=float)
    p.add_argument("--measure", action="store_true", help="run the throughput test without an expected rate")
    p.add_argument("--port", type=int, default=29517)
    p.add_argument("--seconds", type=float, default=3)
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 10:
        p.error("--seconds: 0 to 10")
    return args


def main(argv: list[str]) -> int:
    report = check(parse(argv))
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
