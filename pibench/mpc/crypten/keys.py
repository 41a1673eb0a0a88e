"""Key-stream keys agreed by X25519, so that no key ever crosses a link.

The dealer and each party derive the 32-byte key of that party's key stream
(`pibench.mpc.crypten.preprocessing.Prg`) from an ephemeral X25519 exchange: each side sends
only its public key and computes the shared secret, which HKDF-SHA256 turns into the
stream key, bound to the party's role. An eavesdropper on any link, and the other
party, learn nothing of the key. The exchange is not authenticated: an active attacker
on the dealer's link could stand in the middle, so links must still be private and
authenticated (a private network, WireGuard, TLS or SSH tunnels), as the README's
threat model says.
"""

from __future__ import annotations

from typing import Any

import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pibench.mpc.parties.channel import recv_tensor, send_tensor

KEY_BYTES = 32
_INFO = b"pibench key stream v1, rank %d"


def _to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.long).clone()


def agree_key(peer: int, group: Any, rank: int, *, first: bool) -> bytes:
    """The key stream key of party `rank`, agreed with `peer`; `first` sends its public key first.

    Both ends call it with the same `rank` (the party whose stream it is) and opposite `first`.
    """
    mine = X25519PrivateKey.generate()
    public = mine.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if first:
        send_tensor(_to_tensor(public), peer, group)
        theirs, _ = recv_tensor(peer, group)
    else:
        theirs, _ = recv_tensor(peer, group)
        send_tensor(_to_tensor(public), peer, group)
    shared = mine.exchange(X25519PublicKey.from_public_bytes(theirs.numpy().tobytes()))
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=_INFO % rank).derive(shared)
