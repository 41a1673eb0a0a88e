"""Real two-party (and dealer) CrypTen inference in separate processes: accuracy, cost, roles, failures."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pibench.bench import BenchOptions, _client_view, bench_models
from pibench.results import write_result
from pibench.modelfolder.folder import WEIGHTS_FILE
from pibench.modelfolder.spec import model_inputs, server_model
from pibench.models import create_model
from pibench.mpc.parties.launch import PartyError, Session, SessionConfig, free_port
from pibench.mpc.compiler import compile_model
from pibench.mpc.program import INPUT
from pibench.mpc.protocols import PROTOCOLS
from pibench.results import load_layers, load_results

from helpers import (AUDIT_WRAPPER, BYTES_PER_RELU, NETS, density_sweep, kill_party_mid_run, program_rounds, randomize,
                     run_cli, save, tiny_nets)

DEALER_BYTES_PER_RELU = BYTES_PER_RELU["crypten:dealer"]

# every logit check here is of a crypten:dealer run: its tolerance, and why, in pibench.mpc.protocols
LOGIT_ERROR = PROTOCOLS.get("crypten:dealer").logit_tolerance


def test_masked_nets_match_plaintext_in_mpc(tmp_path):
    folders = [save(tmp_path, net, model) for net, model in tiny_nets().items()]
    results = list(bench_models(folders, BenchOptions(repeats=1, batch=16, samples=32)))
    assert [r.model for r in results] == sorted(NETS)
    for r in results:
        row = r.rows[0]
        assert row.error == "", row.error
        assert row.mpc_samples == 32
        assert row.max_logit_error < LOGIT_ERROR, r.model
        assert row.mpc_agreement >= 0.99, r.model
        assert row.mpc_accuracy == pytest.approx(plain_accuracy(folders[results.index(r)], 32))  # labelled digits
        assert row.cost_only  # random weights: the card records no accuracy
    vgg_max = next(r for r in results if r.model == "vgg_max").rows[0]
    assert vgg_max.maxpool_bytes > 0
    assert next(r for r in results if r.model == "vgg_avg").rows[0].maxpool_bytes == 0


def plain_accuracy(folder: str, n: int) -> float:
    """The plaintext model's accuracy (percent) on the first n inputs the client draws."""
    server = server_model(folder)
    x, labels = model_inputs(server.card, server.program.input_shape, n, 0, None)
    return 100 * float((server.logits(x).argmax(1) == labels).double().mean())


def test_wrong_mpc_logits_show_in_agreement_and_error(tmp_path):
    """A client that reports its logits with the class order reversed: agreement and the logit error are
    measured against the launcher's own plaintext model, so the row shows it (agreement 0 with these
    untied logits, an error of whole units), while the costs are those of a normal run."""
    folder = save(tmp_path, "cnn", randomize(create_model("cnn_digits"), seed=3))
    prefix = [sys.executable, str(Path(__file__).parent / "faults" / "wrong_logits.py")]
    options = BenchOptions(repeats=1, samples=8, batch=8, session=SessionConfig(prefixes={"client": prefix}))
    (result,) = bench_models([folder], options)
    row = result.rows[0]
    assert row.error == "" and row.mpc_samples == 8 and row.rounds > 0
    assert row.mpc_agreement < 0.5 and row.max_logit_error > 0.1


def test_fewer_samples_than_a_batch_are_checked_on_the_clients_inputs(tmp_path):
    """36 numbers per input: seeded noise for 1 input is not the first of 4, so the reference must draw 4 too."""
    folder = save(tmp_path, "odd", randomize(create_model("resnet_digits", input_size=6)), dataset="random")
    (result,) = bench_models([folder], BenchOptions(repeats=1, samples=1, batch=4))
    row = result.rows[0]
    assert row.error == "" and row.mpc_samples == 1
    assert row.max_logit_error < LOGIT_ERROR and row.mpc_agreement == 1.0


def test_bytes_grow_by_464_per_kept_relu(tmp_path):
    results, relus, sent = density_sweep(tmp_path, "crypten:dealer", densities=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0))
    assert [r.rows[0].relu_bytes for r in results][0] == 0
    # no ReLU op at all when every mask is false: the all-false layers cost nothing
    assert [l.op for l in results[0].layers].count("relu") == 0
    # the protocol is deterministic: every kept ReLU adds exactly 464 bytes, nothing else changes
    assert [b - sent[0] for b in sent] == [DEALER_BYTES_PER_RELU * n for n in relus]


def test_deepreduce_thinning_saves_exactly_the_removed_relus():
    """drd_c100_230k and _115k share every linear layer; they differ by 114,688 ReLUs x 464 bytes."""
    lin = {}
    for name in ("drd_c100_230k", "drd_c100_115k"):
        program = compile_model(create_model(name))
        lin[name] = [(op.kind, op.layer, op.shape, op.attrs["weight_shapes"]) for op in program.ops
                     if op.kind in ("conv", "linear", "affine")]
    assert lin["drd_c100_230k"] == lin["drd_c100_115k"]
    a, b = bench_models(["drd_c100_230k", "drd_c100_115k"], BenchOptions(repeats=1, samples=0))
    assert a.rows[0].relus - b.rows[0].relus == 114_688
    assert a.rows[0].linear_bytes == b.rows[0].linear_bytes
    assert a.rows[0].bytes_per_party - b.rows[0].bytes_per_party == DEALER_BYTES_PER_RELU * 114_688
    # thinning removes one post-add ReLU layer per block: 9 rounds each
    for name, result in (("drd_c100_230k", a), ("drd_c100_115k", b)):
        assert result.rows[0].rounds == program_rounds(compile_model(create_model(name)), "crypten:dealer")


def test_dealer_is_the_default_and_keeps_weights_and_tuples_out_of_the_online_phase():
    (dealer,) = bench_models(["cnn_digits"], BenchOptions(repeats=2, samples=8, batch=4))
    (tfp,) = bench_models(["cnn_digits"], BenchOptions(repeats=2, samples=8, batch=4, protocol="tfp"))
    d, t = dealer.rows[0], tfp.rows[0]
    assert (d.backend, d.protocol, d.security) == ("crypten", "crypten:dealer",
                                                   PROTOCOLS.get("crypten:dealer").security)
    assert (t.protocol, t.security) == ("crypten:tfp", PROTOCOLS.get("crypten:tfp").security)
    assert t.security.startswith("INSECURE")
    assert d.error == "" and d.mpc_agreement == 1.0 and d.max_logit_error < LOGIT_ERROR
    assert d.offline_bytes > 0 and d.offline_s > 0 and t.offline_bytes is None and t.offline_s is None
    assert d.relu_bytes == t.relu_bytes  # the comparisons run the same protocol online
    # a weights-fixed product opens its input only: 8 bytes an element, sent and received
    program = compile_model(create_model("cnn_digits"))
    shape = {INPUT: program.input_shape, **{i: op.shape for i, op in enumerate(program.ops)}}
    opened = {op.layer: 16 * 4 * math.prod(shape[op.inputs[0]]) for op in program.ops if op.weights}
    assert {row.layer: row.bytes for row in dealer.layers if row.layer in opened} == opened
    assert d.linear_bytes == sum(opened.values()) < t.linear_bytes / 3
    assert [row.protocol for row in dealer.layers] == ["crypten:dealer"] * len(dealer.layers)


DECODE_PARTY = textwrap.dedent(
    """
    import sys, torch
    from pibench.mpc.crypten.compat import import_crypten
    from pibench.mpc.crypten.backend import CryptenBackend
    from pibench.mpc.program import Program
    crypten = import_crypten()
    crypten.init()
    rank = crypten.communicator.get().get_rank()
    backend = CryptenBackend(Program([], (2,)), rank)
    x = backend.share_input(torch.tensor([-2.99998617, 0.5]) if rank == 0 else None, (2,))
    out = backend.reveal_to_client(x)
    theirs = x.get_plain_text(dst=0)  # CrypTen's own decoder, for comparison
    print("OUT", None if out is None else out.tolist(), "CRYPTEN", None if theirs is None else theirs.tolist())
    crypten.uninit()
    """
)


def test_revealed_logits_decode_exactly_between_two_parties():
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", DECODE_PARTY], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, RENDEZVOUS=f"tcp://127.0.0.1:{port}", WORLD_SIZE="2",
                                       RANK=str(rank), DISTRIBUTED_BACKEND="gloo"))
             for rank in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    client = outs[0].split("OUT ")[1]
    values = json.loads(client.split(" CRYPTEN")[0])
    assert values[0] == pytest.approx(-2.99998617, abs=2e-5)  # CrypTen's own decoder gives -3.99998
    assert json.loads(client.split("CRYPTEN ")[1])[0] < -3.9  # proves the test would catch the decode bug
    assert outs[1].startswith("OUT None")  # the server learns nothing


def test_client_never_opens_the_weights_file(tmp_path):
    folder = save(tmp_path, "private", randomize(create_model("cnn_digits"), seed=3))
    opened = tmp_path / "client_opens.txt"
    session = SessionConfig(prefixes={"client": [sys.executable, "-c", AUDIT_WRAPPER, str(opened)]})
    (result,) = bench_models([folder], BenchOptions(repeats=1, samples=16, batch=16, session=session))
    row = result.rows[0]
    # the server used the real weights: MPC logits match the plaintext model's
    assert row.error == "" and row.max_logit_error < LOGIT_ERROR and row.mpc_agreement >= 0.99
    paths = opened.read_text().splitlines()
    assert any(p.endswith("model.json") for p in paths)  # the hook saw the client's file opens
    assert not [p for p in paths if p.endswith(WEIGHTS_FILE) or p.startswith(folder)]


def test_client_view_of_a_folder_has_no_weights(tmp_path):
    folder = save(tmp_path, "secret_name_7k", create_model("cnn_digits"))
    with _client_view(folder) as public:
        assert sorted(os.listdir(public)) == ["masks.safetensors", "model.json"]
        assert "secret_name" not in public  # the server's naming stays on its side
        assert "secret_name" not in "".join(p.read_text() for p in Path(public).glob("*.json"))
    assert not os.path.exists(public)
    with _client_view("resnet18") as name:
        assert name == "resnet18"


def test_killing_a_party_mid_run_fails_fast_without_orphans():
    kill_party_mid_run(SessionConfig(job_timeout=300))


def test_party_that_never_connects_times_out_with_a_clear_message():
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    session = Session(SessionConfig(prefixes={"server": sleeper}, connect_timeout=8))
    t0 = time.monotonic()
    with pytest.raises(PartyError, match=r"timed out while connecting .*not connected: client, dealer, server"):
        session.start()
    assert time.monotonic() - t0 < 30
    assert not session.procs


def test_failed_model_gets_an_error_row_and_the_run_goes_on(tmp_path):
    results = list(bench_models(["no_such_model", "cnn_digits"], BenchOptions(repeats=1)))
    assert "unknown model 'no_such_model'" in results[0].error
    assert results[1].error == ""
    for r in results:
        write_result(tmp_path, r)
    df = load_results(tmp_path)
    assert list(df["model"]) == ["no_such_model"] * 2 + ["cnn_digits"] * 2
    assert list(df["network"]) == ["lan", "wan"] * 2
    layers = load_layers(tmp_path)
    assert set(layers["model"]) == {"cnn_digits"} and layers["op"].iloc[0] == "input"


def test_bench_cli_json_and_csv(tmp_path):
    out = run_cli("bench", "resnet_digits", "--repeats", "2", "--network", "lan,dsl:50:20", "--out", str(tmp_path),
                  "--run-id", "t1", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    (summary,) = json.loads(out.stdout)
    assert summary["relus"] == 4608 and summary["rounds"] == 74 and summary["agreement"] == 1.0
    assert summary["bytes_per_party"] >= DEALER_BYTES_PER_RELU * 4608
    assert set(summary["projected_latency_s"]) == {"lan", "dsl"}
    assert "resnet_digits" in out.stderr  # progress lines name the model
    df = load_results(tmp_path)
    assert list(df["network"]) == ["lan", "dsl"] and set(df["run_id"]) == {"t1"}
    assert len(str(df["latency_s_samples"].iloc[0]).split(";")) == 2
    assert df["threads"].iloc[0] == 1 and df["link"].iloc[0] == "loopback"
