"""The TCP link between two SPU parties: connect, move shares, count the traffic.

SPU 0.9.5 gives Python no link counters. What it does give: with
`enable_pphlo_profile`, every `Runtime.run` logs "Link details: total send bytes S,
recv bytes R, send actions A, ..." for that run. `SpuLink` routes SPU's log to a file
and adds up those lines, plus the shares pibench itself sends (input, weights,
logits), so `read()` works like CrypTen's counters: cumulative bytes sent + received
by this party and its send actions (messages sent; rounds are at most that many).

Parties find each other at the rendezvous (`peer_addresses`): the server tells the
client where its link listens, so the parties may be in other namespaces or machines.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
from typing import Any
from urllib.parse import urlparse

from pibench.mpc.parties.measure import Reading

PARTY_IDS = ("client", "server")  # link rank 0, 1
_LINK_DETAILS = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+)")
_CONNECT_RETRY_MS = 500
_RECV_TIMEOUT_MS = 3_600_000  # one CHEETAH convolution of a big layer takes minutes on 2 cores


def import_spu() -> Any:
    """`spu.libspu`, or an ImportError that says how to install the extra."""
    try:
        import spu.libspu as libspu
    except ImportError as e:
        raise ImportError(
            f"the SPU backend needs SecretFlow SPU ({e}); install the extra in the same pip call as pibench: "
            "`make install EXTRAS=test,spu` (or pip install -e \".[spu]\" into a fresh venv)") from e
    return libspu


def _free_address(host: str) -> str:
    """host:port with a port free on `host` now (brpc binds it moments later)."""
    with socket.create_server((host, 0)) as probe:
        return f"{host}:{probe.getsockname()[1]}"


def _read_address(reader: Any, peer: str) -> str:
    line = reader.readline().strip()
    if not line:
        raise ConnectionError(f"the {peer} closed the rendezvous before naming its SPU link address")
    return line


def peer_addresses(rank: int, rendezvous: str, timeout: float) -> list[str]:
    """host:port of the client's and the server's SPU link, agreed at the rendezvous.

    The client listens at the rendezvous (tcp://HOST:PORT); the server connects and
    names its link's address as the client reaches it (another namespace or machine)
    with a free port; the client answers with a free port of its own on HOST.
    """
    url = urlparse(rendezvous if "://" in rendezvous else f"tcp://{rendezvous}")
    if not url.hostname or not url.port:
        raise ValueError(f"rendezvous {rendezvous!r} is not tcp://HOST:PORT")
    if rank == 0:
        with socket.create_server((url.hostname, url.port)) as listener:
            listener.settimeout(timeout)
            connection, _ = listener.accept()
            connection.settimeout(timeout)
            with connection, connection.makefile("r") as reader:
                server = _read_address(reader, "server")
                client = _free_address(url.hostname)
                connection.sendall(f"{client}\n".encode())
                return [client, server]
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = socket.create_connection((url.hostname, url.port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(_CONNECT_RETRY_MS / 1000)
    with connection, connection.makefile("r") as reader:
        connection.settimeout(timeout)
        server = _free_address(connection.getsockname()[0])
        connection.sendall(f"{server}\n".encode())
        return [_read_address(reader, "client"), server]


def _pack(parts: list[bytes]) -> bytes:
    return struct.pack("<I", len(parts)) + b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def _unpack(data: bytes) -> list[bytes]:
    (n,), at, parts = struct.unpack_from("<I", data), 4, []
    for _ in range(n):
        (size,) = struct.unpack_from("<Q", data, at)
        parts.append(data[at + 8: at + 8 + size])
        at += 8 + size
    return parts


class SpuLink:
    """One party's end of the link, with traffic counters read from SPU's log."""

    def __init__(self, rank: int, rendezvous: str, log_path: str, connect_timeout: float) -> None:
        libspu = import_spu()
        self.libspu = libspu
        self.rank = rank
        self.log_path = log_path
        options = libspu.logging.LogOptions()
        options.enable_console_logger = False  # stdout carries the party's events
        options.system_log_path = log_path
        libspu.logging.setup_logging(options)
        desc = libspu.link.Desc()
        for party, address in zip(PARTY_IDS, peer_addresses(rank, rendezvous, connect_timeout)):
            desc.add_party(party, address)
        desc.connect_retry_interval_ms = _CONNECT_RETRY_MS
        desc.connect_retry_times = max(1, int(connect_timeout * 1000 / _CONNECT_RETRY_MS))
        desc.recv_timeout_ms = _RECV_TIMEOUT_MS
        self.context = libspu.link.create_brpc(desc, rank)
        self._log_offset = 0
        self.bytes = 0  # sent + received by this party
        self.actions = 0  # messages sent by this party

    # -- counters ------------------------------------------------------------------------
    def read(self) -> Reading:
        """Wall clock, bytes and send actions (as rounds) so far; SPU does not split out communication time."""
        self._read_log()
        return Reading(time.perf_counter(), float(self.bytes), self.actions)

    def reset(self) -> None:
        self._read_log()
        self.bytes = self.actions = 0

    def _read_log(self) -> None:
        """Add the "Link details" lines SPU logged since the last call."""
        if not os.path.exists(self.log_path):
            return
        if os.path.getsize(self.log_path) < self._log_offset:  # rotated
            self._log_offset = 0
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            text = f.read()
        end = text.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_offset += end
        for sent, received, actions in _LINK_DETAILS.findall(text[:end].decode(errors="replace")):
            self.bytes += int(sent) + int(received)
            self.actions += int(actions)

    # -- messages ------------------------------------------------------------------------
    @property
    def peer(self) -> int:
        return 1 - self.rank

    def send_share(self, share: Any) -> None:
        """Send one SPU share (meta and chunks) to the peer, counted as protocol traffic."""
        data = _pack([share.meta, *share.share_chunks])
        self.context.send(self.peer, data)
        self.bytes += len(data)
        self.actions += 1

    def recv_share(self) -> Any:
        data = self.context.recv(self.peer)
        self.bytes += len(data)
        meta, *chunks = _unpack(data)
        share = self.libspu.Share()
        share.meta = meta
        share.share_chunks = chunks
        return share

    def share_from(self, io: Any, owner: int, plain: Any) -> Any:
        """This party's share of a value that `owner` holds in plaintext (None elsewhere); the owner sends the other share."""
        if self.rank != owner:
            return self.recv_share()
        shares = io.make_shares(plain, self.libspu.Visibility.VIS_SECRET)
        self.send_share(shares[self.peer])
        return shares[owner]

    def exchange(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Swap a JSON object with the peer (bookkeeping, not counted as protocol traffic)."""
        self.context.send(self.peer, json.dumps(obj))
        return json.loads(self.context.recv(self.peer))

    def close(self) -> None:
        self.context.stop_link()
