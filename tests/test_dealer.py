"""The dealer protocol's algebra, checked in one process on ring elements (no communication).

The parties' real runs are in test_mpc_parties.py; here every identity the protocol
relies on is checked exactly: weights-fixed products, the dealer's tuples, and the
plan replay that must fail loudly when the online phase asks for something else.
"""

import pytest
import torch

from pibench.mpc.crypten.dealer import client_share
from pibench.mpc.crypten.preprocessing import Plan, PreprocessedProvider, PreprocessingError, Prg, Request, party_draws
from pibench.mpc.protocols import CLIENT, SERVER
from pibench.mpc.crypten.weights_fixed import FixedWeight, local_share, truncate_share

SCALE = 2**16
PRODUCTS = [  # op, input shape, weight shape, keyword arguments
    ("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}),
    ("conv2d", (1, 4, 7, 7), (6, 2, 3, 3), {"stride": (2, 2), "padding": (0, 0), "dilation": (1, 1), "groups": 2}),
    ("matmul", (3, 10), (10, 5), {}),
    ("mul", (2, 4, 5, 5), (1, 4, 1, 1), {}),
]


def prgs(seed: int = 0) -> list[Prg]:
    g = torch.Generator().manual_seed(seed)
    return [Prg(bytes(torch.randint(0, 256, (32,), generator=g, dtype=torch.uint8).tolist())) for _ in range(2)]


def split(value: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.randint(-(2**63), 2**63 - 1, value.shape, generator=g)
    return value - r, r


def ring(t: torch.Tensor) -> torch.Tensor:
    return (t * SCALE).long()


@pytest.mark.parametrize("op,x_shape,w_shape,kwargs", PRODUCTS)
def test_weights_fixed_shares_reconstruct_the_product_exactly(op, x_shape, w_shape, kwargs):
    g = torch.Generator().manual_seed(1)
    x, w = ring(torch.randn(x_shape, generator=g)), ring(torch.randn(w_shape, generator=g) * 0.3)
    b = torch.randint(-(2**63), 2**63 - 1, w_shape, generator=g)  # the once-per-model mask
    a = torch.randint(-(2**63), 2**63 - 1, x_shape, generator=g)  # fresh per inference
    req = Request.make("fixed", x_shape, w_shape, op=op, kwargs=kwargs)
    c0, c1 = split(req.ring_op(a, b), g)
    a0, a1 = split(a, g)
    x0, x1 = split(x, g)
    e = (x0 - a0) + (x1 - a1)  # the only value opened online
    d = w - b  # opened once, at setup
    z0 = local_share(op, kwargs, CLIENT, e, a0, c0, FixedWeight(0, d))
    z1 = local_share(op, kwargs, SERVER, e, a1, c1, FixedWeight(0, d, w))
    exact = req.ring_op(x, w)
    assert torch.equal(z0 + z1, exact)  # ring arithmetic: no error at all before truncation
    truncated = truncate_share(z0, SCALE) + truncate_share(z1, SCALE)
    assert (truncated - exact.div(SCALE, rounding_mode="floor")).abs().max() <= 1
    plain = getattr(torch, op)(x.double() / SCALE, w.double() / SCALE, **kwargs)
    assert (truncated.double() / SCALE - plain).abs().max() < 1e-3


@pytest.mark.parametrize("request_", [
    Request.make("additive", (3, 4), (3, 4), op="mul"),
    Request.make("additive", (2, 3, 8, 8), (4, 3, 3, 3), op="conv2d", kwargs=PRODUCTS[0][3]),
    Request.make("binary", (5, 6), (5, 6)),
    Request.make("b2a", (7,)),
])
def test_dealer_tuples_are_correct_and_only_c0_travels(request_):
    dealer, client, server = prgs(), prgs()[CLIENT], prgs()[SERVER]  # the parties hold copies of the keys
    c0 = client_share(request_, dealer, [])
    mine, theirs = party_draws(request_, client, CLIENT) + [c0], party_draws(request_, server, SERVER)
    assert len(mine) == len(theirs) and c0.shape == request_.output_size()
    if request_.kind == "additive":
        a, b, c = (m + t for m, t in zip(mine, theirs))
        assert torch.equal(request_.ring_op(a, b), c)
    elif request_.kind == "binary":
        a, b, c = (m ^ t for m, t in zip(mine, theirs))
        assert torch.equal(a & b, c)
    else:  # one random bit, shared as XOR and as a sum
        bit = mine[0] ^ theirs[0]
        assert set(bit.unique().tolist()) <= {0, 1}
        assert torch.equal(mine[1] + theirs[1], bit)


def test_weights_fixed_pair_uses_the_mask_the_server_drew():
    dealer, server = prgs(), prgs()[SERVER]
    masks = [dealer[SERVER].ring((4, 3, 3, 3))]
    assert torch.equal(server.ring((4, 3, 3, 3)), masks[0])  # same key, same stream position
    req = Request.make("fixed", (1, 3, 8, 8), (4, 3, 3, 3), op="conv2d", kwargs=PRODUCTS[0][3], key=0)
    c0 = client_share(req, dealer, masks)
    a1, c1 = party_draws(req, server, SERVER)
    a0 = party_draws(req, prgs()[CLIENT], CLIENT)[0]
    assert torch.equal(req.ring_op(a0 + a1, masks[0]), c0 + c1)


def test_prg_streams_differ_per_key_and_draw():
    p, q = prgs()
    x, y = p.ring((1000,)), p.ring((1000,))
    assert not torch.equal(x, y) and not torch.equal(x, q.ring((1000,)))
    assert torch.equal(Prg(p.key).ring((1000,)), x)
    bits = p.bits((10_000,)).double()
    assert set(bits.unique().tolist()) == {0.0, 1.0} and abs(bits.mean() - 0.5) < 0.03


class LocalSource:
    """Tuples made in this process, as a party's DealerLink would return them."""

    rank = CLIENT

    def __init__(self) -> None:
        self.dealer, self.client = prgs(), prgs()[CLIENT]

    def make(self, plan: Plan) -> list[list[torch.Tensor]]:
        return [party_draws(r, self.client, CLIENT) + [client_share(r, self.dealer, [])] for r in plan.requests]


def test_online_phase_that_leaves_the_recorded_plan_fails_loudly():
    provider = PreprocessedProvider(LocalSource())
    with pytest.raises(PreprocessingError, match="outside a recorded or preprocessed inference"):
        provider.generate_binary_triple((2,), (2,))
    with provider.record() as plan:
        provider.generate_binary_triple((2,), (2,))
        provider.B2A_rng((2,))
    assert [r.kind for r in plan.requests] == ["binary", "b2a"]

    provider.preprocess(plan)
    provider.generate_binary_triple((2,), (2,))
    with pytest.raises(PreprocessingError, match=r"online request #1 is .*b2a.*sizes=\(\(3,\),\)"):
        provider.B2A_rng((3,))

    provider.preprocess(plan)
    provider.generate_binary_triple((2,), (2,))
    with pytest.raises(PreprocessingError, match="used 1 tuples but 2 were preprocessed"):
        provider.finish_online()

    provider.preprocess(plan)
    provider.generate_binary_triple((2,), (2,))
    provider.B2A_rng((2,))
    with pytest.raises(PreprocessingError, match="has no preprocessed tuple"):
        provider.B2A_rng((2,))


def test_plans_that_differ_in_any_request_have_different_digests():
    provider = PreprocessedProvider(LocalSource())
    plans = []
    for sizes in ((2,), (2,), (3,)):
        with provider.record() as plan:
            provider.generate_binary_triple(sizes, sizes)
            provider.B2A_rng(sizes)
        plans.append(plan)
    assert plans[0].digest() == plans[1].digest() != plans[2].digest()
    reordered = Plan(plans[0].requests[::-1])
    assert reordered.digest() != plans[0].digest()
