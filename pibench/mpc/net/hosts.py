"""Where the parties of a benchmark run, and which links each model is measured on.

    local  every party on this machine's loopback; one measurement per model, and every
           network profile is a projection from it (link "loopback").
    netns  each party (client, server, dealer) in its own network namespace, joined by
           veth links (pibench.mpc.net.netns, root only). Each profile is *measured* with the
           links capped at its bandwidth by tbf (link "netns:100mbit"; the profile
           "unshaped" runs uncapped, link "netns:unshaped"); profiles that share a
           bandwidth share one measurement. The parties stay up while the cap changes.

Round-trip time cannot be emulated in this kernel (no netem): a measured netns link
has the veth's ~0 RTT, so for a profile with RTT > 0 the link is labelled
"netns:400mbit,rtt0" and only `projected_latency_s` carries its RTT term.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Iterator

from pibench.errors import Unavailable, UsageError
from pibench.mpc.net.netns import NetnsHosts, check_available
from pibench.mpc.net.network import NetworkProfile
from pibench.mpc.parties.launch import SessionConfig

HOSTS = ("local", "netns")


@dataclass(frozen=True)
class Link:
    """One measurement per model: the link's name, its bandwidth cap and the profiles it stands for."""

    name: str
    rate_mbit: float | None  # tbf cap per host and direction; None: uncapped
    profiles: tuple[NetworkProfile, ...]


def _check_hosts(hosts: str) -> None:
    if hosts not in HOSTS:
        raise UsageError(f"unknown --hosts {hosts!r}; use one of {', '.join(HOSTS)}")


def measurement_links(hosts: str, networks: list[NetworkProfile], local_link: str = "loopback") -> list[Link]:
    """The links to measure each model on, in the order of the first profile that needs each."""
    _check_hosts(hosts)
    if hosts == "local":
        return [Link(local_link, None, tuple(networks))]
    groups: dict[float | None, list[NetworkProfile]] = {}
    for profile in networks:
        groups.setdefault(profile.bandwidth_mbps, []).append(profile)
    links = []
    for rate, profiles in groups.items():
        name = "netns:unshaped" if rate is None else f"netns:{rate:g}mbit"
        if any(p.rtt_ms > 0 for p in profiles):
            name += ",rtt0"  # the measured link has no delay; the profile's RTT is only projected
        links.append(Link(name, rate, tuple(profiles)))
    return links


@contextlib.contextmanager
def place_parties(hosts: str, cfg: SessionConfig) -> Iterator[tuple[NetnsHosts | None, SessionConfig]]:
    """Set up hosts for the parties of `cfg`; torn down on exit.

    Yields the namespaces (for `set_rate`; None for local parties) and a copy of `cfg`
    whose prefixes and rendezvous address put each party on its host. With netns every
    process inside the namespaces is stopped and the namespaces and links are deleted
    on exit, also when a party crashed or the caller raised.
    """
    _check_hosts(hosts)
    if hosts == "local":
        yield None, cfg
        return
    try:
        check_available(shaping=True)
    except RuntimeError as e:
        raise Unavailable(f"--hosts netns: {e}; or use --hosts local (loopback, projected networks only)") from None
    with NetnsHosts(tuple(cfg.roles)) as net:
        prefixes = {role: net[role].prefix + list(cfg.prefixes.get(role, [])) for role in cfg.roles}
        yield net, replace(cfg, prefixes=prefixes, rendezvous_host=net["client"].ip)
