"""Play the adversary: record everything each party's process sees on the real `pibench bench` path,
then try to recover the other side's secret from it.

- The curious **client** tries every weight of the server (every op, every size): each
  tensor it received alone, plus or minus every ring tensor it drew, and plus or minus
  every key-stream block it can compute from its view (the server's share of a weights-
  fixed mask, A1 = x - E - A0, from its own input x, the opened E and its share A0).
- The curious **server** looks for the client's logits (exact ring values) in everything
  it received or holds after the run, and for anything correlated with the client's
  input, which comes from a seed the server is not given.
- Nobody's transcript may contain a key-stream key (they are agreed by X25519), of this
  session or another, and no key repeats across parties or sessions.
- Under `crypten:fss` the server also compares its openings x + r across inferences and
  across the ReLU layers of one inference: with a mask used twice their difference is that
  of the client's activations.
- Under `crypten:fss` neither party may hold key material of the other's FSS keys: it
  searches its transcript for the other's DCF root seeds (the one part of a key the two do
  not share, so this also finds the other's key itself, or one seed grown into both), and
  completes the other's key with any it finds: evaluated as a pair with its own, a binary
  search then reads the comparison point, the mask r mod 2^(k-1), hence the activations.

The dealer protocols run it all: `crypten:dealer`, and `crypten:fss`, where each party
also receives its own FSS keys and the server sees x + r at every ReLU.

Each attack is shown to work where it should (positive controls): under `crypten:tfp`
the client recovers the weights (the INSECURE label), and with an injected bug (the
reduce-based reveal, a key stream restarting at 0, keys sent in the clear or fixed per
rank, FSS masks reused across inferences or across layers, one root seed for both DCF
keys, the server's FSS keys sent to the client; see tests/adversary/record_party.py) the
matching attack succeeds. docs/security-tests.md says what each attack found. The recorder and
the attacks: tests/adversary/ (attacks.py, fss_attacks.py).
"""

import json

import pytest
import torch

from adversary.attacks import (derived_masks, logits_found, max_input_correlation, near, received_values, record,
                               recovered_fraction, weights)
from adversary.fss_attacks import (activation_difference_found, activations_learned, alpha_guesses, alphas_right,
                                   layer_difference_found, root_seeds_found)

SPU_SCALE = 2**18  # SPU's FM64 runtime with 18 fractional bits


def key_windows(views: dict) -> list[str]:
    """Which parties received some key-stream key of any party, anywhere in their transcript."""
    keys = {k for view in views.values() for k in view["keys"]}
    assert keys or all(not v["keys"] for v in views.values())
    leaks = []
    for role, view in views.items():
        blob = b"".join(t.contiguous().numpy().tobytes() if isinstance(t, torch.Tensor) else t for t in view["seen"])
        leaks += [role for key in keys if key in blob]
    return leaks


def pooled(sessions: list[dict]) -> dict:
    """The views of several sessions as one ("role@session": view), for `key_windows` across sessions."""
    return {f"{role}@{i}": view for i, views in enumerate(sessions) for role, view in views.items()}


def repeated_stream_keys(sessions: list[dict]) -> list[str]:
    """Key-stream keys held by more than one party or in more than one session ("role@session = ..."): each
    must be fresh, agreed anew by X25519 for every party in every session."""
    holders: dict[bytes, list[str]] = {}
    for i, views in enumerate(sessions):
        for role in ("client", "server"):
            for key in set(views[role]["keys"]):
                holders.setdefault(key, []).append(f"{role}@{i}")
    return sorted(" = ".join(who) for who in holders.values() if len(who) > 1)


# -- the fixed protocol ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixed_runs(tmp_path_factory):
    """The fixed protocol's recorded runs of drd_c100_7k, by protocol: each session is recorded once per module."""
    runs = {}

    def run(protocol: str):
        if protocol not in runs:
            runs[protocol] = record(tmp_path_factory.mktemp(protocol.split(":")[1]), protocol, "drd_c100_7k")
        return runs[protocol]

    return run


@pytest.fixture(scope="module", params=["crypten:dealer", "crypten:fss"])
def dealer_run(request, fixed_runs):
    """Both dealer protocols; under crypten:fss each party also receives its FSS keys and sees x + r."""
    return fixed_runs(request.param)


def test_dealer_client_recovers_no_weight(dealer_run):
    result, views = dealer_run
    assert result.rows[0].mpc_agreement == 1.0
    client = views["client"]
    all_weights = weights("drd_c100_7k")
    assert len(all_weights) > 20 and any(w.numel() < 100 for _, w in all_weights)  # small ones too: scales, fc bias
    assert len(derived_masks(client)) > 0  # the client can compute some of the server's shares
    for layer, w in all_weights:
        assert recovered_fraction(client, w) < 0.01, layer


def test_dealer_server_sees_no_logit_and_no_input(dealer_run):
    result, views = dealer_run
    assert logits_found(views["server"], views["client"]) == 0
    assert logits_found(views["dealer"], views["client"]) == 0
    x = views["client"]["input"][0]
    # five standard deviations of a chance correlation between independent vectors of this length
    assert max_input_correlation(views["server"], x) < 5 / x.numel() ** 0.5
    if result.rows[0].protocol == "crypten:fss":  # the server opens x + r: a mask used twice shows a zero difference,
        assert len(views["client"]["input"]) == 2  # since the same input went in twice (recording, timed)
        assert activation_difference_found("drd_c100_7k", views["server"], views["client"]) < 0.01


def test_no_key_stream_key_in_any_transcript(dealer_run):
    _, views = dealer_run
    assert {len(k) for v in views.values() for k in v["keys"]} == {32}
    assert len({k for v in views.values() for k in v["keys"]}) == 2  # one stream per party, agreed with the dealer
    assert key_windows(views) == []


def json_messages(view: dict) -> list:
    """The control messages (JSON) a party received from its peers (`pibench.mpc.parties.channel`)."""
    out = []
    for t in view["seen"]:
        if isinstance(t, torch.Tensor) and t.dtype == torch.uint8:
            try:
                out.append(json.loads(bytes(t.numpy()).decode()))
            except (UnicodeDecodeError, ValueError):
                continue
    return out


def keys_of(obj) -> set[str]:
    """Every key of every dict inside a JSON value."""
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys_of(v)}
    return {k for v in obj for k in keys_of(v)} if isinstance(obj, list) else set()


def test_the_server_reports_counts_to_the_client_never_timings(dealer_run):
    """After a job the server tells the client its bytes and rounds per op (public, from the program and the
    protocol) but none of its timings: per-layer times are a side channel the threat model does not name."""
    _, views = dealer_run
    reports = [m for m in json_messages(views["client"]) if isinstance(m, dict) and "ops" in m]
    assert len(reports) == 1 and len(reports[0]["ops"]) > 10 and "rounds" in reports[0]["ops"][0]
    timings = {k for k in keys_of(reports) if k.endswith("_s") or "time" in k}
    assert timings == set(), timings


def test_fss_layers_of_one_inference_share_no_mask(fixed_runs):
    _, views = fixed_runs("crypten:fss")
    assert [g["count"] for g in views["server"]["fss"]] == [4096, 2048, 1024] * 2  # two inferences
    assert layer_difference_found("drd_c100_7k", views["server"], views["client"]) < 0.01


def test_no_party_holds_the_others_fss_key(fixed_runs):
    _, views = fixed_runs("crypten:fss")
    client, server = views["client"], views["server"]
    for mine, other, party in ((client, server, 0), (server, client, 1)):
        assert not root_seeds_found(mine, other).any()
        assert alphas_right(alpha_guesses(mine, other, party), mine, other) == 0


def test_stream_keys_are_fresh_per_session_and_party(fixed_runs):
    sessions = [fixed_runs(protocol)[1] for protocol in ("crypten:dealer", "crypten:fss")]
    assert repeated_stream_keys(sessions) == []
    assert len({k for views in sessions for view in views.values() for k in view["keys"]}) == 4
    assert key_windows(pooled(sessions)) == []  # not even a key of another session


@pytest.mark.parametrize("protocol", ["crypten:dealer", "crypten:tfp"])
def test_server_holds_no_logit_of_a_digits_batch(tmp_path, protocol):
    _, views = record(tmp_path, protocol, "cnn_digits", batch=4)
    assert sum(t.numel() for t in views["client"]["revealed"]) >= 40
    assert logits_found(views["server"], views["client"]) == 0


# -- positive controls: each attack finds what an injected bug or an insecure mode gives away --------
def test_tfp_client_recovers_every_product_weight(tmp_path):
    _, views = record(tmp_path, "crypten:tfp", "drd_c100_7k")
    for layer, w in weights("drd_c100_7k", products_only=True):
        assert recovered_fraction(views["client"], w) > 0.99, layer
    assert logits_found(views["server"], views["client"]) == 0  # the server's side holds


def test_reduce_reveal_hands_the_server_half_the_logits(tmp_path):
    _, views = record(tmp_path, "crypten:dealer", "cnn_digits", batch=4, inject="reduce_reveal")
    found = logits_found(views["server"], views["client"])
    assert found >= 10, found  # gloo's reduce leaves the final sums of half the buffer at the server


def test_key_stream_restarting_at_zero_unmasks_the_first_conv(tmp_path):
    result, views = record(tmp_path, "crypten:dealer", "drd_c100_7k", inject="counter_reset")
    assert result.rows[0].mpc_agreement == 1.0  # the bug does not show in the results
    layer, w = weights("drd_c100_7k", products_only=True)[0]
    assert recovered_fraction(views["client"], w) == 1.0, layer


def test_reused_fss_masks_hand_the_server_the_clients_activation_differences(tmp_path):
    """crypten:fss with one mask r for every ReLU layer and inference (the DCF keys stay fresh)."""
    result, views = record(tmp_path, "crypten:fss", "drd_c100_7k", samples=2, inject="mask_reuse")
    assert result.rows[0].mpc_agreement == 1.0  # the bug does not show in the results
    assert len({tuple(x.reshape(-1).tolist()) for x in views["client"]["input"]}) == 2  # two different inputs
    assert activation_difference_found("drd_c100_7k", views["server"], views["client"]) > 0.99


def test_mask_reused_within_an_inference_hands_the_server_activation_differences(tmp_path):
    """crypten:fss with one mask r for every ReLU layer of an inference (a prefix of it for smaller layers),
    fresh for each inference: the comparison across inferences misses it, the one across layers does not."""
    result, views = record(tmp_path, "crypten:fss", "drd_c100_7k", inject="mask_reuse_in_inference")
    assert result.rows[0].mpc_agreement == 1.0  # the bug does not show in the results
    assert activation_difference_found("drd_c100_7k", views["server"], views["client"]) < 0.01
    assert layer_difference_found("drd_c100_7k", views["server"], views["client"]) > 0.99


def test_one_root_seed_for_both_keys_hands_the_client_every_activation(tmp_path):
    """Both parties' DCF keys grown from one root seed: the client's own key is also the server's."""
    result, views = record(tmp_path, "crypten:fss", "drd_c100_7k", inject="shared_root_seed")
    assert result.rows[0].mpc_agreement == 1.0
    client, server = views["client"], views["server"]
    assert root_seeds_found(client, server).all()  # its own key's root seeds
    guesses = alpha_guesses(client, server, 0)
    assert alphas_right(guesses, client, server) > 0.99
    assert activations_learned("drd_c100_7k", client, guesses) > 0.99  # every pre-activation, to 0.01


def test_server_keys_sent_to_the_client_hand_it_every_activation(tmp_path):
    """The dealer sends the client the server's FSS keys too (after its own)."""
    result, views = record(tmp_path, "crypten:fss", "drd_c100_7k", inject="server_keys_to_client")
    assert result.rows[0].mpc_agreement == 1.0
    client, server = views["client"], views["server"]
    assert root_seeds_found(client, server).all() and not root_seeds_found(server, client).any()
    guesses = alpha_guesses(client, server, 0)
    assert alphas_right(guesses, client, server) > 0.99
    assert activations_learned("drd_c100_7k", client, guesses) > 0.99


def test_fixed_stream_keys_repeat_across_sessions(tmp_path):
    """Each party's key-stream key a constant of its rank: no key travels, but every session reuses them."""
    sessions = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        sessions.append(record(tmp_path / str(i), "crypten:dealer", "cnn_digits", inject="fixed_stream_keys")[1])
    assert key_windows(pooled(sessions)) == []  # only the freshness check catches it
    assert repeated_stream_keys(sessions) == ["client@0 = client@1", "server@0 = server@1"]


def test_keys_sent_in_the_clear_are_found(tmp_path):
    _, views = record(tmp_path, "crypten:dealer", "cnn_digits", inject="key_in_clear")
    assert sorted(set(key_windows(views))) == ["client", "server"]


# -- SPU: pibench's own messages over SPU's link (SPU's protocol messages stay inside libspu) ----------
@pytest.mark.parametrize("protocol", ["spu:cheetah", "spu:semi2k"])
def test_spu_shares_reveal_no_logit_and_no_weight(tmp_path, protocol):
    pytest.importorskip("spu")
    result, views = record(tmp_path, protocol, "cnn_digits", batch=2)
    assert result.rows[0].mpc_agreement == 1.0
    assert views["client"]["revealed"] and views["server"]["seen"]
    assert logits_found(views["server"], views["client"]) == 0
    received = received_values(views["client"])  # the weight shares the server sent, at every alignment
    checked = 0
    for layer, w in weights("cnn_digits", scale=SPU_SCALE):
        w = w.reshape(-1)[w.reshape(-1).abs() > 16]  # zero biases say nothing
        checked += w.numel()
        assert w.numel() == 0 or near(w, received).double().mean() < 0.01, layer
    assert checked > 1000
