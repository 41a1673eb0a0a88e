"""Base oblivious transfers over X25519, from `cryptography` (128 of them set up IKNP).

Chou-Orlandi's "simplest OT" needs point addition, which `cryptography`'s X25519 does
not expose (it only multiplies a point by a clamped scalar). So the receiver uses the
other classic DH-based construction (Bellare-Micali style, with obliviously sampled
keys): for choice b it makes one real key pair and one public key nobody knows a
secret key for, and the sender derives a key from each by Diffie-Hellman:

    sender    e random; E = x(eG)                                      -> E      (32 B)
    receiver  R_b = x(aG) (a random); R_(1-b) = x((2^254 + 8)·P), P a
              random curve point (found by hashing random u until on
              the curve; the scalar 8·(2^251 + 1) clears its cofactor)   -> R_0, R_1 (64 B)
    sender    k_0 = H(E, R_0, R_1, j, 0, x(e·R_0)),  k_1 = H(..., 1, x(e·R_1))
    receiver  k_b = H(E, R_0, R_1, j, b, x(a·E))

Semi-honest security: R_0 and R_1 are both points of the prime-order subgroup that look
uniform, so the sender learns nothing of b (DDH); the receiver knows no discrete log of
R_(1-b) and cannot compute k_(1-b) (CDH). H is SHA-256, truncated to 16 bytes.
"""

from __future__ import annotations

import hashlib
import secrets

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

P = 2**255 - 19
A = 486662
KEY_BYTES = 16
POINT_BYTES = 32
_COFACTOR_CLEARING = X25519PrivateKey.from_private_bytes((8).to_bytes(32, "little"))  # clamped: 2^254 + 8


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def oblivious_public_key() -> bytes:
    """A uniform-looking point of the prime-order subgroup whose discrete log nobody knows."""
    while True:
        u = secrets.randbelow(P)
        rhs = (u * u * u + A * u * u + u) % P
        if rhs == 0 or pow(rhs, (P - 1) // 2, P) != 1:  # not on the curve (on its twist)
            continue
        try:
            return _COFACTOR_CLEARING.exchange(X25519PublicKey.from_public_bytes(u.to_bytes(32, "little")))
        except ValueError:  # a point of small order: cleared to the identity
            continue


def _kdf(transcript: bytes, index: int, bit: int, shared: bytes) -> bytes:
    data = b"pibench gc base OT v1" + transcript + index.to_bytes(4, "little") + bytes([bit]) + shared
    return hashlib.sha256(data).digest()[:KEY_BYTES]


class Sender:
    """The party that ends up with both keys of every OT."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()
        self.message = _public(self._key)  # E, to the receiver

    def keys(self, answer: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """(k_0, k_1) of every OT, from the receiver's (R_0, R_1)."""
        pairs = []
        for j, (r0, r1) in enumerate(answer):
            transcript = self.message + r0 + r1
            pairs.append(tuple(_kdf(transcript, j, bit, self._key.exchange(X25519PublicKey.from_public_bytes(r)))
                               for bit, r in ((0, r0), (1, r1))))
        return pairs


def receive(sender_message: bytes, choices: list[int]) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """The receiver's keys k_(b_j) and its answer (R_0, R_1) per OT, for choice bits `choices`."""
    peer = X25519PublicKey.from_public_bytes(sender_message)
    keys, answer = [], []
    for j, bit in enumerate(choices):
        mine = X25519PrivateKey.generate()
        pair = [oblivious_public_key(), oblivious_public_key()]
        pair[bit] = _public(mine)
        transcript = sender_message + pair[0] + pair[1]
        keys.append(_kdf(transcript, j, bit, mine.exchange(peer)))
        answer.append((pair[0], pair[1]))
    return keys, answer
