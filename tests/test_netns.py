"""Network namespaces as separate hosts: reachability, tbf bandwidth caps, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pibench.mpc.net import netns
from pibench.mpc.net.netns import NetnsHosts, check_available, cleanup_stale, list_namespaces

PREFIX = "pibtest"  # keeps these tests' namespaces apart from real runs'
PORT = 5001

# Receiver: count bytes until EOF, answer with the count. Sender: time from connect
# to that answer, so the clock covers the whole transfer through the shaper.
RECEIVER = f"""
import socket
server = socket.create_server(("0.0.0.0", {PORT}))
print("ready", flush=True)
conn, _ = server.accept()
n = 0
while chunk := conn.recv(1 << 20):
    n += len(chunk)
conn.sendall(str(n).encode())
"""
SENDER = f"""
import socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
block = b"x" * (1 << 20)
conn = socket.create_connection((host, {PORT}))
start = time.perf_counter()
for off in range(0, n, len(block)):
    conn.sendall(block[: min(len(block), n - off)])
conn.shutdown(socket.SHUT_WR)
received = int(conn.recv(64))
print(received, time.perf_counter() - start)
"""


def transfer(net: NetnsHosts, src: str, dst: str, nbytes: int) -> float:
    """Send nbytes over TCP from host src to host dst; return the seconds it took."""
    receiver = subprocess.Popen(net[dst].prefix + [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        out = subprocess.run(
            net[src].prefix + [sys.executable, "-c", SENDER, net[dst].ip, str(nbytes)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()
    finally:
        receiver.wait(timeout=10)
    assert int(out[0]) == nbytes
    return float(out[1])


def leftovers(net: NetnsHosts) -> list[str]:
    """Our namespaces still listed, plus any root-namespace link that names our run."""
    stem = net.switch.removesuffix("-sw")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [ns for ns in net.namespaces if ns in list_namespaces()] + [
        line for line in links.splitlines() if stem in line
    ]


@pytest.mark.root
def test_hosts_reach_each_other_and_tbf_caps_bandwidth():
    nbytes, rate = 20_000_000, 100.0
    with NetnsHosts(("client", "server", "dealer"), prefix=PREFIX) as net:
        assert len({h.ip for h in net.hosts.values()}) == 3
        assert all(ns in list_namespaces() for ns in net.namespaces)
        assert transfer(net, "dealer", "client", 1_000_000) > 0
        unshaped = transfer(net, "client", "server", nbytes)
        net.set_rate(rate)
        shaped_up = transfer(net, "client", "server", nbytes)
        shaped_down = transfer(net, "server", "client", nbytes)
    assert leftovers(net) == []
    projected = nbytes * 8 / (rate * 1e6)
    print(f"20 MB: unshaped {unshaped:.3f} s, 100 Mbit {shaped_up:.3f} / {shaped_down:.3f} s, projected {projected:.2f} s")
    for shaped in (shaped_up, shaped_down):  # both directions are capped (a lower bound: load only slows it)
        assert shaped > 0.8 * projected
    assert unshaped < projected / 2


@pytest.mark.root
def test_cleanup_after_exception_and_killed_process():
    with pytest.raises(RuntimeError, match="party failed"):
        with NetnsHosts(("client", "server"), rate_mbit=100, prefix=PREFIX) as net:
            crashed = subprocess.Popen(net["server"].prefix + ["sleep", "60"])
            running = subprocess.Popen(net["client"].prefix + ["sleep", "60"])
            crashed.send_signal(signal.SIGKILL)
            crashed.wait(timeout=10)
            raise RuntimeError("party failed")
    # The process still running inside was stopped, and nothing is left behind.
    assert running.wait(timeout=10) is not None
    assert leftovers(net) == []


@pytest.mark.root
def test_cleanup_stale_removes_only_dead_runs():
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    stale_ns, live_ns = f"{PREFIX}-{dead.pid}-abc123-client", f"{PREFIX}-{live.pid}-abc123-client"
    try:
        for ns in (stale_ns, live_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        assert cleanup_stale(PREFIX) == [stale_ns]
        assert stale_ns not in list_namespaces() and live_ns in list_namespaces()
    finally:
        live.kill()
        live.wait()
        for ns in (stale_ns, live_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_clear_errors_without_root_or_iproute2(monkeypatch):
    monkeypatch.setattr(netns.shutil, "which", lambda cmd: None)
    with pytest.raises(RuntimeError, match="install iproute2"):
        check_available()
    monkeypatch.setattr(netns.shutil, "which", lambda cmd: f"/usr/sbin/{cmd}")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="run as root"):
        NetnsHosts(("client", "server")).__enter__()


def test_rejects_bad_hosts_and_rates():
    with pytest.raises(ValueError, match="distinct"):
        NetnsHosts(("client", "client"))
    with pytest.raises(ValueError, match="host name"):
        NetnsHosts(("Client!",))
    with pytest.raises(ValueError, match="positive"):
        NetnsHosts(("client",), rate_mbit=0)
    with pytest.raises(KeyError, match="hosts are client, server"):
        NetnsHosts(("client", "server"))["dealer"]


def test_names_carry_creator_pid_and_prefix():
    net = NetnsHosts(("client", "server"), prefix=PREFIX)
    assert all(ns.startswith(f"{PREFIX}-{os.getpid()}-") for ns in net.namespaces)
    assert net["client"].prefix[:4] == ["ip", "netns", "exec", net["client"].namespace]
    assert net["client"].prefix[4:] == ["env", "GLOO_SOCKET_IFNAME=eth0"]
    assert net["client"].ip != net["server"].ip
    assert NetnsHosts(("client",)).switch != NetnsHosts(("client",)).switch  # parallel runs never collide
