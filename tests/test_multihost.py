"""Parties as separate hosts: two-machine party commands, model mismatch, and (root) shaped namespaces.

The root tests run real CrypTen parties in network namespaces: measured latency on a
100 Mbit/s tbf-capped link against the bandwidth projection, the dealer on its own
host, and cleanup after a party is killed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from pibench.bench import BenchOptions, bench_models
from pibench.modelfolder.folder import CARD_FILE, MASKS_FILE, load_card, public_hash, save_model
from pibench.modelfolder.spec import model_inputs
from pibench.models import create_model
from pibench.mpc.net import netns
from pibench.mpc.net.hosts import Link, measurement_links, place_parties
from pibench.mpc.parties.launch import Session, SessionConfig, free_port
from pibench.mpc.net.netns import list_namespaces
from pibench.mpc.net.network import parse_network, parse_networks
from pibench.relu import masked_relus
from pibench.results import load_layers, load_results

PIBENCH = [sys.executable, "-m", "pibench.cli"]
JOB = {"repeats": 1, "batch": 1, "samples": 1, "seed": 0, "data_dir": None}


def save(folder, model, accuracy=0.5) -> str:
    save_model(model, folder, dataset="digits", method="test", budget=None, accuracy=accuracy)
    return str(folder)


def public_copy(folder, dest) -> str:
    """What a client machine holds: model.json and masks.safetensors, no weights."""
    os.makedirs(dest)
    for name in (CARD_FILE, MASKS_FILE):
        shutil.copy(os.path.join(folder, name), os.path.join(dest, name))
    return str(dest)


def party(role: str, port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(PIBENCH + ["party", "--role", role, "--rendezvous", f"tcp://127.0.0.1:{port}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- profiles and links -------------------------------------------------------------------------
def test_netns_measures_each_bandwidth_once_and_labels_unemulated_rtt():
    nets = parse_networks("unshaped,lan,100mbit,wan,fast:100:0")
    assert measurement_links("local", nets) == [Link("loopback", None, tuple(nets))]
    links = [(link.name, link.rate_mbit, [p.name for p in link.profiles]) for link in measurement_links("netns", nets)]
    assert links == [
        ("netns:unshaped", None, ["unshaped"]),
        ("netns:3000mbit,rtt0", 3000.0, ["lan"]),  # lan's 0.3 ms RTT cannot be emulated: it stays projected
        ("netns:100mbit", 100.0, ["100mbit", "fast"]),  # same cap, one measurement
        ("netns:400mbit,rtt0", 400.0, ["wan"]),
    ]
    with pytest.raises(ValueError, match="unknown --hosts 'docker'; use one of local, netns"):
        measurement_links("docker", nets)


def test_unshaped_profile_has_no_bandwidth_term():
    unshaped = parse_network("unshaped")
    assert unshaped.bandwidth_mbps is None and unshaped.rtt_ms == 0
    assert unshaped.project(0.5, rounds=100, nbytes=1e9) == 0.5
    assert parse_network("100mbit").project(0.5, rounds=100, nbytes=12.5e6) == pytest.approx(1.5)


def test_netns_without_root_says_how_to_fix_it(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match=r"--hosts netns: .*run as root.*or use --hosts local"):
        list(bench_models(["cnn_digits"], BenchOptions(hosts="netns")))


# -- two machines: `pibench party` on each --------------------------------------------------------
def test_two_party_commands_with_dealer_write_the_clients_rows(tmp_path):
    """The compose / two-machine flow: the client, given only the public files, writes results itself."""
    torch.manual_seed(0)
    model = create_model("cnn_digits")
    # a model that always answers the first test input's class: its accuracy on the 8 inputs is that
    # class's share of their labels, neither 0 nor 100 %, and the MPC logits (the bias) decide it exactly
    card = load_card(save(tmp_path / "card", model))
    _, labels = model_inputs(card, card.input_shape, 8, 0, None)
    answer = int(labels[0])
    expected = 100 * float((labels == answer).double().mean())
    assert 0 < expected < 100
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[answer] = 5.0
    server_folder = save(tmp_path / "server" / "m", model)
    client_folder = public_copy(server_folder, tmp_path / "client" / "m")
    port, out = free_port(), tmp_path / "results"
    common = ["--samples", "8", "--batch", "4", "--repeats", "2"]
    server = party("server", port, "--model", server_folder, *common)
    dealer = party("dealer", port)
    client = party("client", port, "--model", client_folder, *common, "--out", str(out), "--network",
                   "lan,100mbit", "--link", "two-hosts", "--run-id", "t2")
    outputs = {}
    for role, proc in (("client", client), ("server", server), ("dealer", dealer)):
        outputs[role] = proc.communicate(timeout=180)
        assert proc.returncode == 0, outputs[role][1][-2000:]
    # run by hand, a party prints what it waits for and progress lines, not the launcher's event lines
    stdout, stderr = outputs["client"]
    assert "PIBENCH " not in stdout and f"client: connected at tcp://127.0.0.1:{port} (crypten:dealer)" in stdout
    assert re.search(rf"client: {client_folder}: \d+\.\d+ s median online, \d+\.\d+ MB/party, \d+ rounds", stdout)
    assert f"client: waiting for the server and the dealer at tcp://127.0.0.1:{port} until " in stderr
    assert f"server: {server_folder}: done" in outputs["server"][0]
    df = load_results(out)
    assert list(df["network"]) == ["lan", "100mbit"] and set(df["link"]) == {"two-hosts"}
    row = df.iloc[0]
    assert row["model"] == "m" and pd.isna(row["error"])
    assert row["relus"] == 4096 and row["mpc_samples"] == 8 and row["mpc_accuracy"] == expected
    # no weights on the client, so no plaintext reference
    assert pd.isna(row["mpc_agreement"]) and pd.isna(row["max_logit_error"])
    assert row["offline_bytes"] > 0 and row["offline_s"] > 0  # apart from online
    assert row["protocol"] == "crypten:dealer"
    assert df.iloc[1]["projected_latency_s"] == pytest.approx(
        row["compute_s"] + row["bytes_per_party"] / 2 * 8 / 100e6)
    # the same bytes and rounds as the launcher's own loopback run of this model
    (ref,) = bench_models([server_folder], BenchOptions(repeats=1, samples=8, batch=4,
                                                         networks=parse_networks("lan")))
    assert (row["bytes_per_party"], row["rounds"], row["offline_bytes"]) == (
        ref.rows[0].bytes_per_party, ref.rows[0].rounds, ref.rows[0].offline_bytes)
    layers = load_layers(out)
    assert layers["op"].iloc[0] == "input" and layers["bytes"].sum() == row["bytes_per_party"]


def test_parties_with_different_masks_refuse_to_run(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn_digits")
    server_folder = save(tmp_path / "a", model)
    for layer in masked_relus(model).values():  # same architecture, one mask column linearized
        layer.mask[..., 0] = False
    other = save(tmp_path / "b", model)
    client_folder = public_copy(other, tmp_path / "client" / "b")
    port = free_port()
    server = party("server", port, "--model", server_folder)
    dealer = party("dealer", port)
    client = party("client", port, "--model", client_folder, "--out", str(tmp_path / "results"))
    hashes = {"client": public_hash(other)[:16], "server": public_hash(server_folder)[:16]}
    folders = {"client": client_folder, "server": server_folder}
    for role, proc in (("client", client), ("server", server)):
        peer = "server" if role == "client" else "client"
        expected = (f"client and server loaded different models: this {role}'s {folders[role]} has masks/arch hash "
                    f"{hashes[role]}, the {peer}'s has masks/arch hash {hashes[peer]}; both must use the same "
                    "model.json and masks.safetensors")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2
        assert expected in err, err[-2000:]
        assert folders[peer] not in err  # no path crosses to the peer
    _, err = dealer.communicate(timeout=60)
    assert dealer.returncode == 2  # the client's bye said its session failed: every party exits with an error
    assert "the session failed at the client (ModelMismatch" in err and folders["client"] not in err
    assert not (tmp_path / "results").exists()  # nothing was measured


def test_out_is_for_the_client_only():
    out = subprocess.run(PIBENCH + ["party", "--role", "server", "--rendezvous", "tcp://127.0.0.1:1", "--model",
                                    "cnn_digits", "--out", "x"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--out: only the client learns the results; drop --out from the server" in out.stderr


# -- namespaces (root) ------------------------------------------------------------------------------
@pytest.mark.root
def test_shaped_namespace_run_matches_loopback_bytes_and_the_bandwidth_projection():
    """drd_c100_7k (24.8 MB/party): bytes are the same on every link; 100 Mbit/s costs what bytes/rate says."""
    options = dict(repeats=2, samples=0)
    (loopback,) = bench_models(["drd_c100_7k"], BenchOptions(**options, networks=parse_networks("100mbit")))
    (hosts,) = bench_models(["drd_c100_7k"], BenchOptions(**options, hosts="netns",
                                                           networks=parse_networks("unshaped,100mbit")))
    unshaped, capped = hosts.rows
    assert (loopback.rows[0].link, unshaped.link, capped.link) == ("loopback", "netns:unshaped", "netns:100mbit")
    assert loopback.rows[0].bytes_per_party == unshaped.bytes_per_party == capped.bytes_per_party
    assert loopback.rows[0].rounds == unshaped.rounds == capped.rounds
    assert capped.latency_s_median > unshaped.latency_s_median
    bandwidth_s = capped.bytes_per_party / 2 * 8 / 100e6  # + rounds * 0 RTT
    print(f"\ndrd_c100_7k {capped.bytes_per_party:,} B/party: loopback {loopback.rows[0].latency_s_median:.3f} s, "
          f"netns unshaped {unshaped.latency_s_median:.3f} s (comm {unshaped.comm_s:.3f}), 100 Mbit "
          f"{capped.latency_s_median:.3f} s (comm {capped.comm_s:.3f}); bandwidth term {bandwidth_s:.3f} s, "
          f"projected {capped.projected_latency_s:.3f} s")
    # The cap holds (tbf lets nothing through faster, less its burst); how close the projection comes is a
    # measurement, printed above and in the docs, not a bound a loaded machine could break.
    assert capped.comm_s > 0.8 * bandwidth_s and capped.latency_s_median > 0.8 * bandwidth_s


@pytest.mark.root
@pytest.mark.parametrize("protocol", ["crypten:dealer", "crypten:fss"])
def test_dealer_runs_on_its_own_host_and_its_traffic_stays_offline(protocol):
    job = {**JOB, "model": "resnet_digits"}
    with Session(SessionConfig(protocol=protocol)) as session:
        local = session.run(job)
    with place_parties("netns", SessionConfig(protocol=protocol)) as (net, cfg), Session(cfg) as session:
        assert cfg.prefixes["dealer"][:4] == ["ip", "netns", "exec", net["dealer"].namespace]
        assert cfg.rendezvous_host == net["client"].ip
        dealer_pid = session.pids()["dealer"]
        assert str(dealer_pid) in subprocess.run(["ip", "netns", "pids", net["dealer"].namespace],
                                                 capture_output=True, text=True).stdout.split()
        net.set_rate(100)
        shaped = session.run(job)
    for event in (local, shaped):
        assert event["error"] is None and event["offline_bytes"] > 0
    # the dealer's link is capped too: what it sends the client (c0 shares; FSS keys) takes its time offline
    assert shaped["offline_s"] >= 0.9 * shaped["offline_bytes_client"] * 8 / 100e6
    if protocol == "crypten:fss":  # the server's keys cross its own capped link at the same time
        assert shaped["offline_bytes_server"] > 0.9 * shaped["offline_bytes_client"]
    assert (shaped["bytes"], shaped["rounds"], shaped["offline_bytes"]) == (
        local["bytes"], local["rounds"], local["offline_bytes"])
    assert not [ns for ns in net.namespaces if ns in list_namespaces()]


@pytest.mark.root
def test_killing_the_server_in_a_namespace_run_ends_the_command_and_leaves_nothing(tmp_path):
    bench = subprocess.Popen(PIBENCH + ["bench", "resnet_digits", "--hosts", "netns", "--network", "unshaped",
                                        "--repeats", "200", "--samples", "0", "--out", str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stem = f"pibench-{bench.pid}-"
    try:
        lines = []
        for line in bench.stderr:  # wait until the parties are measuring
            lines.append(line)
            if "resnet_digits on netns:unshaped" in line:
                break
        else:
            pytest.fail("bench never started measuring:\n" + "".join(lines[-20:]))
        ours = [ns for ns in list_namespaces() if ns.startswith(stem)]
        assert len(ours) == 4  # client, server, dealer and the switch
        pids = {ns: netns._namespace_pids(ns) for ns in ours}
        server_ns = next(ns for ns in ours if ns.endswith("-server"))
        time.sleep(1.0)
        for pid in pids[server_ns]:
            os.kill(pid, signal.SIGKILL)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 2
    assert "pibench bench: error: the server party (rank 1, pid" in err and "exited with code -9" in err, err[-2000:]
    assert not [ns for ns in list_namespaces() if ns.startswith(stem)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert stem not in links
    for pid in (p for found in pids.values() for p in found):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("role", ["client", "server"])
def test_a_party_whose_peer_never_comes_gives_up_with_a_clear_error(role):
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pibench.cli", "party", "--role", role, "--rendezvous", rendezvous,
                          "--model", "cnn_digits", "--connect-timeout", "3"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"the {role} did not connect to its peers at {rendezvous} within 3 s" in out.stderr
    assert time.monotonic() - t0 < 45
