"""Framed messages between processes of one session, over torch.distributed (gloo).

JSON for control messages (never pickle: a party must not run code a peer sends) and
flat int64 tensors for ring elements. These calls bypass CrypTen's communicator, so
they never show up in its online counters; callers that report the traffic count it
with `json_bytes` / `tensor_bytes`.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist

_HEADER_BYTES = 8  # one int64 length before every payload


def send_json(obj: Any, dst: int, group: Any) -> int:
    """Send a JSON-able object; returns the bytes sent."""
    payload = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    dist.send(torch.tensor([payload.numel()], dtype=torch.long), dst, group=group)
    dist.send(payload, dst, group=group)
    return _HEADER_BYTES + payload.numel()


def recv_json(src: int, group: Any) -> tuple[Any, int]:
    """Receive one JSON object; returns it and the bytes received."""
    size = torch.zeros(1, dtype=torch.long)
    dist.recv(size, src, group=group)
    data = torch.zeros(int(size.item()), dtype=torch.uint8)
    dist.recv(data, src, group=group)
    return json.loads(bytes(data.numpy()).decode()), _HEADER_BYTES + data.numel()


def send_tensor(t: torch.Tensor, dst: int, group: Any) -> int:
    """Send an int64 tensor, flattened; returns the bytes sent."""
    flat = t.reshape(-1).to(torch.long).contiguous()
    dist.send(torch.tensor([flat.numel()], dtype=torch.long), dst, group=group)
    dist.send(flat, dst, group=group)
    return _HEADER_BYTES + 8 * flat.numel()


def isend_tensor(t: torch.Tensor, dst: int, group: Any) -> tuple[list[Any], int]:
    """Start sending an int64 tensor, flattened, without waiting: gloo's own thread moves it while the
    caller goes on. Returns the pending works (wait on them before reusing the tensor) and the bytes."""
    flat = t.reshape(-1).to(torch.long).contiguous()
    header = torch.tensor([flat.numel()], dtype=torch.long)
    works = [dist.isend(header, dst, group=group), dist.isend(flat, dst, group=group)]
    return works, _HEADER_BYTES + 8 * flat.numel()


def recv_tensor(src: int, group: Any) -> tuple[torch.Tensor, int]:
    """Receive a flat int64 tensor; returns it and the bytes received."""
    size = torch.zeros(1, dtype=torch.long)
    dist.recv(size, src, group=group)
    data = torch.empty(int(size.item()), dtype=torch.long)
    dist.recv(data, src, group=group)
    return data, _HEADER_BYTES + 8 * data.numel()
