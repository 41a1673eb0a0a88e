"""SecretFlow SPU (CHEETAH, SEMI2K) as a second MPC backend: two real party processes over SPU's brpc link."""

import json
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import yaml

from pibench.bench import BenchOptions, bench_models
from pibench.mpc.backend import run_plain
from pibench.modelfolder.spec import model_inputs, server_model
from pibench.mpc.parties.launch import SessionConfig, free_port
from pibench.mpc.net.network import parse_network
from pibench.mpc.parties.party import EVENT_PREFIX
from pibench.mpc.protocols import PROTOCOLS
from pibench.results import load_results

from helpers import kill_party_mid_run, run_cli, save, tiny_net, with_density

pytest.importorskip("spu", reason="SecretFlow SPU is not installed: make install EXTRAS=test,spu")

# bytes per kept ReLU per party, sent + received: the README's 144 (SEMI2K) and 98.5 (CHEETAH)
SLOPE = {"semi2k": 144, "cheetah": 98.5}
PARTY = ("import sys, json; from pibench.mpc.spu.party import run_spu_party; from pibench.mpc.parties.party import read_jobs;"
         "from pibench.modelfolder.spec import PARTY_MODELS;"
         "run_spu_party(sys.argv[1], sys.argv[2], models=PARTY_MODELS, protocol=sys.argv[3],"
         " connect_timeout=float(sys.argv[4]), jobs=read_jobs(sys.stdin))")


def run_parties(protocol, jobs, connect_timeout=60, roles=("client", "server"), timeout=900):
    """Two SPU party processes serving `jobs`; the client's events and both return codes."""
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    lines = "".join(json.dumps({"id": i, **job}) + "\n" for i, job in enumerate(jobs))
    procs = []
    for role in roles:
        jobs_file = tempfile.TemporaryFile("w+")  # all jobs, then EOF: the parties end together
        jobs_file.write(lines)
        jobs_file.seek(0)
        procs.append(subprocess.Popen([sys.executable, "-c", PARTY, role, rendezvous, f"spu:{protocol}", str(connect_timeout)],
                                      stdin=jobs_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    events = [json.loads(line[len(EVENT_PREFIX):]) for line in outs[0][0].splitlines()
              if line.startswith(EVENT_PREFIX)]
    return events, [p.returncode for p in procs], [err for _, err in outs]


def tolerance(protocol: str) -> float:
    """spu:PROTOCOL's largest logit error (and why: pibench.mpc.protocols)."""
    return PROTOCOLS.get(f"spu:{protocol}").logit_tolerance


def plaintext_logits(folder, n):
    server = server_model(folder)
    x, _ = model_inputs(server.card, server.program.input_shape, n, 0, None)
    return run_plain(server.program, x)


def job(model, samples=8, batch=8, repeats=1):
    return {"model": model, "samples": samples, "batch": batch, "repeats": repeats, "seed": 0, "data_dir": None}


@pytest.mark.parametrize("protocol", ["semi2k", pytest.param("cheetah", marks=pytest.mark.slow)])
def test_bytes_follow_kept_relus_and_logits_match_plaintext(tmp_path, protocol):
    densities = [0.0, 0.25, 0.5, 1.0]
    folders = [save(tmp_path, f"d{int(d * 100)}", with_density(d, i)) for i, d in enumerate(densities)]
    events, codes, errs = run_parties(protocol, [job(f) for f in folders])
    assert codes == [0, 0], errs
    results = [e for e in events if e["event"] == "result"]
    assert len(results) == len(folders), events
    for folder, r in zip(folders, results):
        reference = plaintext_logits(folder, 8)
        logits = torch.tensor(r["logits"], dtype=torch.float64)
        assert (logits - reference).abs().max() <= tolerance(protocol)
        assert (logits.argmax(1) == reference.argmax(1)).float().mean() >= 0.99
        assert r["ops"][0]["op"] == "input" and r["ops"][-1]["op"] == "output"
        assert r["offline_bytes"] is None and r["setup_bytes"] > 0 and r["rounds"] > 0
    kept = torch.tensor([8.0 * r["program"]["relus"] for r in results])  # a batch of 8
    sent = torch.tensor([float(r["bytes"]) for r in results])
    fit = torch.linalg.lstsq(torch.stack([kept, torch.ones_like(kept)], 1), sent.unsqueeze(1)).solution[:, 0]
    slope, base = float(fit[0]), float(fit[1])
    assert kept[0] == 0 and base == pytest.approx(float(sent[0]), rel=0.02)
    for n, b in zip(kept, sent):
        assert abs(b - (base + slope * n)) <= 0.02 * b
    assert slope == pytest.approx(SLOPE[protocol], rel=0.02)
    relu_bytes = [sum(op["bytes"] for op in r["ops"] if op["op"] == "relu") for r in results]
    assert relu_bytes[0] == 0 and relu_bytes[-1] == pytest.approx(slope * float(kept[-1]), rel=0.02)


@pytest.mark.parametrize("net", ["vgg_max", "wrn_preact"])
def test_maxpool_and_preactivation_nets_match_plaintext(tmp_path, net):
    folder = save(tmp_path, net, tiny_net(net))
    events, codes, errs = run_parties("semi2k", [job(folder)])
    assert codes == [0, 0], errs
    (result,) = [e for e in events if e["event"] == "result"]
    logits = torch.tensor(result["logits"], dtype=torch.float64)
    assert (logits - plaintext_logits(folder, 8)).abs().max() <= tolerance("semi2k")
    if net == "vgg_max":
        assert next(op for op in result["ops"] if op["op"] == "maxpool")["bytes"] > 0


def test_a_model_that_fails_to_load_is_an_error_event_and_the_session_goes_on():
    events, codes, errs = run_parties("semi2k", [job("no_such_model"), job("cnn_digits", samples=0, batch=1)])
    assert codes == [0, 0], errs
    assert events[1]["event"] == "error" and "unknown model 'no_such_model'" in events[1]["error"]
    assert events[2]["event"] == "result" and events[2]["error"] is None


def test_a_peer_that_never_connects_ends_the_party_with_a_clear_message():
    t0 = time.monotonic()
    events, codes, errs = run_parties("semi2k", [], connect_timeout=3, roles=("client",), timeout=60)
    assert time.monotonic() - t0 < 30
    assert codes == [2] and not events
    assert "the client did not connect to its peers at tcp://127.0.0.1:" in errs[0]


def test_bench_runs_spu_parties_through_the_launcher(tmp_path):
    folder = save(tmp_path, "half", with_density(0.5, 1))
    (result,) = bench_models([folder], BenchOptions(protocol="spu:semi2k", repeats=2, samples=8, batch=8))
    row = result.rows[0]
    assert row.error == "", row.error
    assert (row.backend, row.protocol) == ("spu", "spu:semi2k") and row.security.startswith("INSECURE")
    assert row.mpc_samples == 8 and row.mpc_agreement >= 0.99 and row.max_logit_error <= tolerance("semi2k")
    assert row.relu_bytes > 0 and row.linear_bytes > 0 and row.bytes_per_party > row.relu_bytes
    assert row.offline_bytes is None and len(str(row.latency_s_samples).split(";")) == 2


def test_killing_an_spu_party_mid_run_fails_fast_without_orphans():
    kill_party_mid_run(SessionConfig(protocol="spu:semi2k", job_timeout=300))


@pytest.mark.slow
def test_a_sweep_measures_crypten_and_spu_side_by_side(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "run": "both", "networks": ["lan"], "repeats": 1, "samples": 1,
        "protocols": ["crypten:dealer", "spu:cheetah", "spu:semi2k"],
        "cost_only": [{"model": "cnn_digits"}, {"arch": "resnet_digits", "allocation": "senet", "budgets": [1000]}],
    }))
    done = run_cli("sweep", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "results" / "both"
    results = load_results(run)
    assert sorted(results["protocol"].unique()) == [
        "crypten:dealer", "spu:cheetah", "spu:semi2k"]
    assert len(results) == 6 and results["error"].isna().all() and (results["mpc_agreement"] == 1.0).all()
    assert results.groupby("model")["protocol"].nunique().eq(3).all()
    report = (run / "report.md").read_text()
    assert "- `spu:cheetah`: semi-honest client/server; no dealer" in report
    assert "- `spu:semi2k` **(not secure: benchmark only)**: INSECURE: SPU 0.9.5's SEMI2K" in report
    assert "parties: client, server and a dealer" in report  # crypten:dealer
    assert (run / "figures" / "protocol_costs.png").stat().st_size > 1000


@pytest.mark.root
def test_spu_parties_in_separate_network_namespaces():
    """The server tells the client where its link listens, so parties on other hosts find each other."""
    (result,) = bench_models(["cnn_digits"], BenchOptions(protocol="spu:semi2k", hosts="netns", repeats=1,
                                                          networks=[parse_network("100mbit")]))
    row = result.rows[0]
    assert row.error == "" and row.link == "netns:100mbit" and row.mpc_agreement == 1.0 and row.bytes_per_party > 0
