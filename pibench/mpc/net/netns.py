"""Separate hosts on one machine: one Linux network namespace per party.

Each party (client, server, dealer) gets its own network namespace with its own
loopback and one Ethernet interface, so the parties talk over a real (virtual)
network instead of the shared loopback, and that network can be capped in bandwidth.

    namespace <prefix>-<pid>-<token>-sw       bridge br0 with ports p0, p1, p2
    namespace <prefix>-<pid>-<token>-client   lo, eth0 = 10.231.0.1/24  (veth peer of p0)
    namespace <prefix>-<pid>-<token>-server   lo, eth0 = 10.231.0.2/24  (veth peer of p1)
    namespace <prefix>-<pid>-<token>-dealer   lo, eth0 = 10.231.0.3/24  (veth peer of p2)

Every link is created directly inside a namespace (`ip -n SW link add ... peer ...
netns HOST`), never in the root namespace: the hosts have no route to anything
outside, parallel runs reuse the same subnet on separate, unconnected switches, and
deleting the namespaces deletes every link. The creator's pid is part of each name,
so `cleanup_stale` can tell leftovers of a dead run from a live run's namespaces.

Bandwidth: a `tbf` qdisc on each host's eth0 caps what that host sends, so every
direction between two hosts is capped at the rate, like a full-duplex link.
Delay cannot be emulated in this kernel (no `netem`), so round-trip time stays a
projected term. Needs root and iproute2 (`ip`, `tc`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from types import TracebackType

from pibench.errors import Unavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "pibench"
# Private addresses used only on the namespaces' own switch; nothing routes them out.
SUBNET = ipaddress.ip_network("10.231.0.0/24")
# tbf bucket: 1 ms of traffic at the cap (at least 32 KiB, so one segmented TSO burst
# fits and timer granularity does not cost throughput). Short bursts above the rate
# last at most ~1 ms, negligible against transfers of many milliseconds.
BURST_SECONDS = 0.001
MIN_BURST_BYTES = 32 * 1024
# tbf queue: packets may wait up to 50 ms before being dropped. TCP's small-queue
# limit keeps the real backlog far below that; the slack avoids drops (and the
# retransmission stalls they cause) when several sockets burst at once.
QUEUE_LATENCY_MS = 50
IFNAME = "eth0"  # each host's one interface
_STOP_WAIT_S = 3.0
_HOST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")


@dataclass(frozen=True)
class Host:
    """One party's namespace: run a command there with `prefix + argv`."""

    name: str
    namespace: str
    ip: str

    @property
    def prefix(self) -> list[str]:
        # gloo binds to the address the machine's hostname resolves to, which does not
        # exist inside the namespace, and then falls back to 127.0.0.1, where the peer
        # cannot reach it; naming the interface makes it bind to this host's address.
        return ["ip", "netns", "exec", self.namespace, "env", f"GLOO_SOCKET_IFNAME={IFNAME}"]


def check_available(*, shaping: bool = False) -> None:
    """Raise RuntimeError naming what is missing (root, `ip`, `tc`) and how to fix it."""
    if shutil.which("ip") is None:
        raise Unavailable("network namespaces need the `ip` command: install iproute2 (apt-get install iproute2)")
    if shaping and shutil.which("tc") is None:
        raise Unavailable("bandwidth caps need the `tc` command: install iproute2 (apt-get install iproute2)")
    if os.geteuid() != 0:
        raise Unavailable("network namespaces need root: run as root (e.g. `sudo .venv/bin/pibench ...`)")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None when they can); for skips and CLI help."""
    try:
        check_available(shaping=True)
    except RuntimeError as e:
        return str(e)
    return None


def _run(argv: list[str], *, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _namespace_pids(namespace: str) -> list[int]:
    return [int(p) for p in _run(["ip", "netns", "pids", namespace], check=False).split()]


def _stop_processes(namespace: str) -> None:
    """SIGTERM every process in the namespace, then SIGKILL what outlives the grace period."""
    pids = _namespace_pids(namespace)
    if not pids:
        return
    log.debug("stopping processes %s in %s", pids, namespace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + _STOP_WAIT_S
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = _namespace_pids(namespace)
        if not pids:
            return
    log.warning("processes %s in namespace %s survived SIGKILL", pids, namespace)


def _delete(namespaces: list[str]) -> None:
    """Stop the processes inside, then delete the namespaces (their links go with them)."""
    existing = set(list_namespaces())
    for ns in namespaces:
        if ns in existing:
            _stop_processes(ns)
    for ns in namespaces:
        if ns in existing:
            _run(["ip", "netns", "del", ns], check=False)


def _creator_pid(namespace: str, prefix: str) -> int | None:
    match = re.match(rf"^{re.escape(prefix)}-(\d+)-[0-9a-f]+-", namespace)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces (and so their links and processes) left by dead runs.

    Only namespaces named `<prefix>-<pid>-...` whose creating process `pid` is gone
    are removed, so a parallel run's namespaces are left alone. Returns the names
    deleted.
    """
    check_available()
    stale = [
        ns
        for ns in list_namespaces()
        if (pid := _creator_pid(ns, prefix)) is not None and pid != os.getpid() and not _alive(pid)
    ]
    if stale:
        log.info("removing %d stale namespace(s): %s", len(stale), ", ".join(stale))
        _delete(stale)
    return stale


def _tbf_args(rate_mbit: float) -> list[str]:
    rate_bit = int(rate_mbit * 1e6)
    burst = max(int(rate_bit / 8 * BURST_SECONDS), MIN_BURST_BYTES)
    return ["tbf", "rate", f"{rate_bit}bit", "burst", str(burst), "latency", f"{QUEUE_LATENCY_MS}ms"]


class NetnsHosts:
    """Context manager: one namespace per host name, joined by a private bridge.

    >>> with NetnsHosts(("client", "server"), rate_mbit=100) as net:
    ...     subprocess.run(net["server"].prefix + ["python", "-c", "..."])

    `net[name].ip` is the host's address, `net[name].prefix` the argv prefix that
    runs a command inside it. On exit (normal, exception or Ctrl-C) every process
    still running in the namespaces is stopped and the namespaces are deleted.
    """

    def __init__(
        self,
        names: tuple[str, ...] | list[str] = ("client", "server", "dealer"),
        rate_mbit: float | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"host names must be distinct and non-empty, got {names}")
        for name in names:
            if not _HOST_NAME.match(name) or name == "sw":
                raise ValueError(f"host name {name!r}: use a lowercase word (letters, digits, _), not 'sw'")
        if len(names) > SUBNET.num_addresses - 2:
            raise ValueError(f"at most {SUBNET.num_addresses - 2} hosts, got {len(names)}")
        if rate_mbit is not None and rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be positive, got {rate_mbit}")
        if not re.match(r"^[a-z][a-z0-9]*$", prefix):
            raise ValueError(f"prefix {prefix!r}: use lowercase letters and digits")
        self.prefix = prefix
        self.rate_mbit: float | None = None
        self._initial_rate = rate_mbit
        stem = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.switch = f"{stem}-sw"
        addresses = list(SUBNET.hosts())
        self.hosts = {name: Host(name, f"{stem}-{name}", str(addresses[i])) for i, name in enumerate(names)}

    def __getitem__(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r}; hosts are {', '.join(self.hosts)}") from None

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this object creates: the hosts' and the switch's."""
        return [h.namespace for h in self.hosts.values()] + [self.switch]

    def __enter__(self) -> NetnsHosts:
        check_available(shaping=self._initial_rate is not None)
        cleanup_stale(self.prefix)
        try:
            self._create()
            self.set_rate(self._initial_rate)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _create(self) -> None:
        sw = self.switch
        _run(["ip", "netns", "add", sw])
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for i, host in enumerate(self.hosts.values()):
            ns, port = host.namespace, f"p{i}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", IFNAME, "netns", ns])
            _run(["ip", "-n", sw, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{host.ip}/{SUBNET.prefixlen}", "dev", IFNAME])
            _run(["ip", "-n", ns, "link", "set", IFNAME, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        log.info(
            "network namespaces up: %s",
            ", ".join(f"{h.name}={h.ip} ({h.namespace})" for h in self.hosts.values()),
        )

    def set_rate(self, rate_mbit: float | None) -> None:
        """Cap every host's egress at `rate_mbit` Mbit/s (None: uncapped); parties may stay up."""
        if rate_mbit is not None and rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be positive, got {rate_mbit}")
        if rate_mbit is not None:
            check_available(shaping=True)
        for host in self.hosts.values():
            if rate_mbit is None:
                if self.rate_mbit is not None:
                    _run(["tc", "-n", host.namespace, "qdisc", "del", "dev", IFNAME, "root"])
            else:
                _run(["tc", "-n", host.namespace, "qdisc", "replace", "dev", IFNAME, "root", *_tbf_args(rate_mbit)])
        self.rate_mbit = rate_mbit
        log.info("bandwidth cap per host and direction: %s", f"{rate_mbit:g} Mbit/s" if rate_mbit else "none")

    def close(self) -> None:
        """Stop every process left in the namespaces and delete them; safe to call twice."""
        _delete(self.namespaces)
