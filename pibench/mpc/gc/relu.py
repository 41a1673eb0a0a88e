"""One layer of N ReLUs by a garbled circuit: the server garbles, the client evaluates.

    offline  the server garbles `circuits.relu` under a fresh Delta: the client's input
             labels (k + 63 per ReLU) come from correlated OT (`iknp`: zero label x0, the
             client receives x0 XOR b·Delta for its bit b), the server's own are fresh
             random labels; the client receives the tables, 3,488 B per ReLU at k = 32.
    online   the server sends the labels of its share's k low bits (16·k B per ReLU);
             the client evaluates and returns the 64 output colors (8 B per ReLU), the
             high ones XORed with its m's bits; the server XORs its decode bits:
             z = ReLU(x) - r'. One round trip per layer.

The client never sees a decode bit, so its colors are uniform to it; the server sees
only the colors of the output wires, i.e. z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pibench.mpc.gc import circuits
from pibench.mpc.gc.garble import Evaluator, Garbler, Plain
from pibench.mpc.gc.labels import U64, random_labels, select

DEFAULT_BITS = 32
OUT_BITS = circuits.RING_BITS


def client_input_count(bits: int) -> int:
    """Client input wires (OTs) per ReLU: its share's k low bits, m's k - 1 low bits, 64 - k known bits p."""
    return bits + OUT_BITS - 1


def table_words(count: int, bits: int = DEFAULT_BITS) -> int:
    """uint64 words of the tables of `count` ReLUs (16-byte ciphertexts, `circuits.ciphertexts`)."""
    return 2 * circuits.ciphertexts(bits) * count


def to_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """The low `bits` bits of uint64 values (N,), LSB first: (bits, N) uint8."""
    values = np.asarray(values, dtype=U64).reshape(-1)
    return ((values[None, :] >> np.arange(bits, dtype=U64)[:, None]) & U64(1)).astype(np.uint8)


def from_bits(bits: np.ndarray) -> np.ndarray:
    """The inverse of `to_bits` for up to 64 bits: (bits, N) -> (N,) uint64."""
    out = np.zeros(bits.shape[1], dtype=U64)
    for i in range(bits.shape[0]):
        out |= bits[i].astype(U64) << U64(i)
    return out


def client_bits(share: np.ndarray, mask: np.ndarray, bits: int = DEFAULT_BITS) -> np.ndarray:
    """The client's input bits ((k + 63), N): its share r of x, the low k - 1 bits of m = -r' for its output
    mask r', then p_i = AND of m's bits k-1 .. i-1 for i = k .. 63 (`circuits`)."""
    m = to_bits(U64(0) - np.asarray(mask, dtype=U64).reshape(-1), OUT_BITS)
    p = np.cumprod(m[bits - 1:OUT_BITS - 1], axis=0, dtype=np.uint8)
    return np.concatenate([to_bits(share, bits), m[:bits - 1], p])


def _split(wires: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The client's wires as (c, m, p) of `circuits.relu`."""
    return wires[:bits], wires[bits:2 * bits - 1], wires[2 * bits - 1:]


def high_bits(mask: np.ndarray, bits: int = DEFAULT_BITS) -> np.ndarray:
    """m = -r' with its low k - 1 bits cleared: what the client XORs into its output colors."""
    return (U64(0) - np.asarray(mask, dtype=U64).reshape(-1)) & ~U64((1 << (bits - 1)) - 1)


@dataclass
class GarbledLayer:
    """What the server keeps of one garbled layer (the tables go to the client)."""

    bits: int
    delta: np.ndarray  # (2,)
    server_zero: np.ndarray  # (k, N, 2): zero labels of its share's bits
    decode: np.ndarray  # (N,) uint64: the output zero labels' colors, packed

    @property
    def count(self) -> int:
        return self.server_zero.shape[1]

    def encode(self, share: np.ndarray) -> np.ndarray:
        """Online: the labels of the server's share (N,) uint64 -> (k, N, 2)."""
        return select(self.server_zero, to_bits(share, self.bits), self.delta)

    def decode_output(self, colors: np.ndarray) -> np.ndarray:
        """Online: z = ReLU(x) - r' (N,) uint64 from the client's packed output colors."""
        return np.asarray(colors, dtype=U64) ^ self.decode


def garble(client_zero: np.ndarray, delta: np.ndarray, bits: int = DEFAULT_BITS) -> tuple[GarbledLayer, np.ndarray]:
    """Garble N ReLUs given the client's input zero labels ((k + 63), N, 2) from the OTs under `delta`.

    Returns what the server keeps and the tables (flat uint64) for the client."""
    count = client_zero.shape[1]
    if client_zero.shape != (client_input_count(bits), count, 2):
        raise ValueError(f"{count} ReLUs at k = {bits} take {client_input_count(bits)} client labels each, got "
                         f"an array of shape {client_zero.shape}")
    server_zero = random_labels((bits, count, 2))
    g = Garbler(delta, table_words(count, bits))
    out = circuits.relu(g, server_zero, *_split(client_zero, bits))
    decode = colors(out)
    return GarbledLayer(bits, delta, server_zero, decode), g.tables()


def evaluate(tables: np.ndarray, server_labels: np.ndarray, client_labels: np.ndarray, client_bits: np.ndarray,
             mask: np.ndarray) -> np.ndarray:
    """The packed output colors (N,) uint64 the client returns, from the tables, one label per input wire,
    its input bits (`client_bits`) and its output mask r'."""
    bits = server_labels.shape[0]
    e = Evaluator(tables)
    c, m, p = _split(client_labels, bits)
    known = [(p[i], client_bits[2 * bits - 1 + i]) for i in range(len(p))]
    out = circuits.relu(e, server_labels, c, m, known)
    e.finish()
    return colors(out) ^ high_bits(mask, bits)


def plain(share: np.ndarray, client_share: np.ndarray, mask: np.ndarray, bits: int = DEFAULT_BITS) -> np.ndarray:
    """z = ReLU(x) - r' by the circuit on cleartext bits (the reference), from both shares and r'."""
    out = circuits.relu(Plain(), to_bits(share, bits), *_split(client_bits(client_share, mask, bits), bits))
    return from_bits(np.stack(out)) ^ high_bits(mask, bits)


def colors(wires: list[np.ndarray]) -> np.ndarray:
    """The color bits of 64 output wires (each (N, 2)), packed per ReLU: (N,) uint64, bit i of wire i."""
    out = np.zeros(wires[0].shape[0], dtype=U64)
    for i, w in enumerate(wires):
        out |= (w[:, 0] & U64(1)) << U64(i)
    return out



def memory_bytes(layers: list[int], bits: int = DEFAULT_BITS) -> int:
    """Memory one inference needs with every party on one machine, for ReLU layers of these sizes (batch
    included): what the client holds (tables, its input labels and masks) and the server (its garbled
    layers), plus the largest layer in flight (its OT matrices and tables at both parties, counted twice)."""
    inputs = client_input_count(bits)
    held = table_words(1, bits) * 8 + 17 * inputs + 8 + 16 * bits + 8  # client (+ its input bits) + server
    in_flight = 2 * (table_words(1, bits) * 8 + 4 * 16 * inputs)  # per ReLU of the layer being garbled
    return held * sum(layers) + in_flight * max(layers, default=0)
