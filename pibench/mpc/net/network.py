"""Network profiles and the latency projection for them.

Runs are measured on one link (loopback unless parties run in shaped namespaces or
on two hosts); for every profile the latency is also *projected*:

    t = t_compute + rounds × RTT + bytes / bandwidth

where t_compute is the measured latency minus the measured communication time and
bytes is what crosses the link in one direction (a full-duplex link carries both
directions at once: half of CrypTen's per-party counter, which adds sent and
received). The projection is labelled as such in results (`projected_latency_s`).

The profile "unshaped" has no bandwidth term (and no RTT): with `--hosts netns` it
is measured on the namespaces' uncapped veth link; its projection is the compute time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pibench.errors import UsageError
from pibench.registry import Registry


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    bandwidth_mbps: float | None  # megabits per second; None: not capped (no bandwidth term)
    rtt_ms: float  # round-trip time in milliseconds

    def project(self, compute_s: float, rounds: int, nbytes: float) -> float:
        """Projected seconds for `rounds` round trips moving `nbytes` through this link."""
        transfer = 0.0 if self.bandwidth_mbps is None else nbytes * 8 / (self.bandwidth_mbps * 1e6)
        return compute_s + rounds * self.rtt_ms / 1e3 + transfer


NETWORKS: Registry[NetworkProfile] = Registry("network profile")
NETWORKS.register("lan", NetworkProfile("lan", 3000.0, 0.3))
NETWORKS.register("wan", NetworkProfile("wan", 400.0, 40.0))
NETWORKS.register("unshaped", NetworkProfile("unshaped", None, 0.0))

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(k|m|g)bit$", re.IGNORECASE)
_RATE_MBPS = {"k": 1e-3, "m": 1.0, "g": 1e3}


def _rate_mbps(text: str) -> float | None:
    m = _RATE.match(text)
    return float(m.group(1)) * _RATE_MBPS[m.group(2).lower()] if m else None


def parse_network(spec: str) -> NetworkProfile:
    """A registered name (lan, wan, unshaped), a rate like "100mbit" (RTT 0), or "name:rate_mbps:rtt_ms"."""
    spec = spec.strip()
    if spec in NETWORKS:
        return NETWORKS.get(spec)
    rate = _rate_mbps(spec)
    if rate is not None:
        return NetworkProfile(spec, rate, 0.0)
    parts = spec.split(":")
    if len(parts) == 3:
        name, mbps, rtt = parts
        try:
            profile = NetworkProfile(name, float(mbps), float(rtt))
        except ValueError:
            profile = None
        if profile and name and profile.bandwidth_mbps > 0 and profile.rtt_ms >= 0:
            return profile
    raise UsageError(
        f"bad network profile {spec!r}: use one of {', '.join(NETWORKS.names())}, a rate like '100mbit' "
        "or 'name:rate_mbps:rtt_ms' (e.g. 'dsl:50:20')"
    )


def parse_networks(specs: str | list[str]) -> list[NetworkProfile]:
    """Comma-separated (or listed) profiles, e.g. "lan,wan,dsl:50:20"."""
    items = specs.split(",") if isinstance(specs, str) else specs
    return [parse_network(s) for s in items if s.strip()]
