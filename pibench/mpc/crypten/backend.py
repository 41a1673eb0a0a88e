"""Secure execution of a `Program` on CrypTen arithmetic shares (client rank 0, server rank 1).

With a `PreprocessedProvider` (the dealer protocol) the products with weights run
weights-fixed (`pibench.mpc.crypten.weights_fixed`): the weights are masked once at setup and
each inference opens only the activations. Without one (CrypTen's TFP provider) the
weights are secret-shared once and every product is a Beaver product that opens
them again: CrypTen's stock protocol.
"""

from __future__ import annotations

from typing import Any

import torch

from pibench.mpc.backend import PRODUCT_WEIGHTS, Backend, decode_ring
from pibench.mpc.crypten.preprocessing import PreprocessedProvider
from pibench.mpc.program import Program
from pibench.mpc.protocols import CLIENT, SERVER
from pibench.mpc.crypten.weights_fixed import FixedWeight, weights_fixed_op


class CryptenBackend(Backend):
    """Every party builds it from the same program; only the server's program carries
    weight values (the client's is `Program.public()`, shapes only).
    """

    bits: int | None = None  # the comparison domain k of protocols that compare x mod 2^k (none here: Z_2^64)

    def __init__(self, program: Program, rank: int, provider: PreprocessedProvider | None = None) -> None:
        super().__init__(program)
        self.rank = rank
        self.provider = provider
        if rank == SERVER and not program.has_weights:
            raise ValueError("the server's program must carry the weights")

    @classmethod
    def for_job(cls, program: Program, rank: int, provider: PreprocessedProvider | None,
                job: dict[str, Any]) -> "CryptenBackend":
        """The backend for one job of a party session (a protocol reads its own options from the job)."""
        return cls(program, rank, provider)

    def share_weights(self) -> None:
        """One-time setup per model: share the weights from the server (masked once, with a dealer)."""
        import crypten

        def share(value: torch.Tensor | None, shape: tuple[int, ...]) -> Any:
            plain = value if self.rank == SERVER else torch.zeros(shape)
            return crypten.cryptensor(plain.float(), src=SERVER)

        if self.provider is None:
            self.load_weights(share)
            return
        products = []
        for i, op, name, value, shape in self.weight_items():
            if (op.kind, name) in PRODUCT_WEIGHTS:
                products.append((i, name, value, shape))
            else:
                self.weights[i][name] = share(value, shape)
        self._fix_products(products)

    def _fix_products(self, products: list[tuple[int, str, torch.Tensor | None, tuple[int, ...]]]) -> None:
        """Mask every product weight once: the server opens D = W - B to the client (see weights_fixed)."""
        import crypten
        import crypten.communicator as comm

        masks = self.provider.source.masks([shape for *_, shape in products])
        encoder = crypten.encoder.FixedPointEncoder()
        opened = []
        for key, (i, name, value, shape) in enumerate(products):
            w = encoder.encode(value.float()) if self.rank == SERVER else None
            d = w - masks[key] if self.rank == SERVER else torch.zeros(shape, dtype=torch.long)
            self.weights[i][name] = FixedWeight(key, d, w)
            opened.append(d)
        if opened:
            comm.get().broadcast(opened, SERVER, batched=True)

    def share_input(self, x: torch.Tensor | None, shape: tuple[int, ...]) -> Any:
        """The client's input as shares; the server only knows its shape."""
        import crypten

        plain = x if self.rank == CLIENT else torch.zeros(shape)
        return crypten.cryptensor(plain.float(), src=CLIENT)

    def reveal_to_client(self, y: Any) -> torch.Tensor | None:
        """Open `y` to the client only, point to point: the server sends its share, the client adds.

        Not CrypTen's `reveal(dst=CLIENT)`: that is `torch.distributed.reduce`, which gloo runs
        as reduce-scatter + gather, leaving the server holding the final sum (the client's
        logits) of half the buffer. Ring integers are decoded exactly (see `decode_ring`).
        """
        import crypten.communicator as comm

        share = y._tensor.share.contiguous()
        if self.rank == SERVER:
            comm.get().send(share, CLIENT)
            return None
        theirs = comm.get().recv(torch.empty_like(share), SERVER)
        return decode_ring(share + theirs, y.encoder.scale)

    def _product(self, x: Any, weight: Any, op: str, kwargs: dict[str, Any]) -> Any:
        if isinstance(weight, FixedWeight):
            return weights_fixed_op(x, weight, op, kwargs, self.provider, self.rank)
        return getattr(x, op)(weight, **kwargs)

    def matmul(self, x: Any, weight: Any) -> Any:
        return self._product(x, weight, "matmul", {})

    def scale(self, x: Any, weight: Any) -> Any:
        return self._product(x, weight, "mul", {})

    def conv(self, x: Any, weight: Any, attrs: dict[str, Any]) -> Any:
        kwargs = {k: attrs[k] for k in ("stride", "padding", "dilation", "groups")}
        return self._product(x, weight, "conv2d", kwargs)

    def cat(self, xs: list[Any], dim: int) -> Any:
        import crypten

        return crypten.cat(xs, dim)

    def avgpool(self, x: Any, attrs: dict[str, Any]) -> Any:
        return x.avg_pool2d(attrs["kernel"], stride=attrs["stride"], padding=attrs["padding"])

    def maxpool(self, x: Any, attrs: dict[str, Any]) -> Any:
        return x.max_pool2d(attrs["kernel"], padding=attrs["padding"], stride=attrs["stride"],
                            ceil_mode=attrs.get("ceil_mode", False))
