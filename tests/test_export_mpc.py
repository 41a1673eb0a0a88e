"""Exported and ONNX-imported model folders in real parties: bench, every protocol, count, sweeps, measure.

The model classes live in tests/helpers.py only: the party processes cannot import
them, so the client runs from the folder's public program alone.
"""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import pibench
from pibench.bench import BenchOptions, bench_models
from pibench.modelfolder.folder import WEIGHTS_FILE
from pibench.mpc.parties.launch import SessionConfig
from pibench.mpc.net.network import parse_networks
from pibench.mpc.protocols import DEFAULT_PROTOCOL, PROTOCOLS
from pibench.sweep.run import run_sweep

from helpers import AUDIT_WRAPPER, hook_count, onnx_file, run_cli, user_net

LAN = parse_networks("lan")
README = Path(__file__).resolve().parents[1] / "README.md"


def export_both(name: str, tmp_path: Path, masks=None) -> tuple[str, str, int]:
    """The model exported, and exported to ONNX then imported: two folders, and its hook-counted ReLUs."""
    model, x = user_net(name)
    pibench.export(model, x, tmp_path / f"{name}_export", masks=masks)
    from pibench.modelfolder.onnx_import import import_onnx

    import_onnx(onnx_file(model, x, tmp_path / f"{name}.onnx"), tmp_path / f"{name}_onnx")
    return str(tmp_path / f"{name}_export"), str(tmp_path / f"{name}_onnx"), hook_count(model, x)


def test_exported_and_imported_models_agree_in_mpc_and_cost_the_same(tmp_path):
    folders, counts = [], {}
    for name in ("mobilenet_like", "resnet_like", "squeezenet_like"):
        exported, imported, count = export_both(name, tmp_path)
        folders += [exported, imported]
        counts[exported] = counts[imported] = count
    results = list(bench_models(folders, BenchOptions(repeats=1, batch=8, samples=8, networks=LAN)))
    rows = {folder: r.rows[0] for folder, r in zip(folders, results)}
    for folder, row in rows.items():
        assert row.error == "", (folder, row.error)
        assert row.mpc_samples == 8 and row.mpc_agreement >= 0.99, folder
        assert row.max_logit_error < PROTOCOLS.get(DEFAULT_PROTOCOL).logit_tolerance, folder
        assert row.relus == counts[folder] and row.arch == "program" and row.cost_only
    for exported, imported in zip(folders[::2], folders[1::2]):
        same = ("relus", "bytes_per_party", "rounds", "relu_bytes", "linear_bytes", "maxpool_bytes", "macs")
        assert [getattr(rows[exported], k) for k in same] == [getattr(rows[imported], k) for k in same], exported
    mobilenet = rows[folders[0]]
    assert mobilenet.relu_bytes > 0 and rows[folders[4]].maxpool_bytes > 0  # ReLU6 in relu_bytes; ceil-mode pool


@pytest.mark.parametrize("protocol", ["crypten:tfp", "spu:semi2k"])
def test_every_protocol_runs_an_exported_model(tmp_path, protocol):
    if protocol.startswith("spu"):
        pytest.importorskip("spu")
    model, x = user_net("squeezenet_like")  # concat, ceil-mode max-pool
    pibench.export(model, x, tmp_path / "squeeze")
    mobilenet, x2 = user_net("mobilenet_like")  # ReLU6, depthwise conv
    pibench.export(mobilenet, x2, tmp_path / "mobile")
    results = list(bench_models([str(tmp_path / "squeeze"), str(tmp_path / "mobile")],
                                BenchOptions(protocol=protocol, repeats=1, batch=4, samples=4, networks=LAN)))
    for r in results:
        row = r.rows[0]
        assert row.error == "", row.error
        assert row.mpc_agreement >= 0.99 and row.relu_bytes > 0, r.model
        assert row.max_logit_error < PROTOCOLS.get(protocol).logit_tolerance, r.model


def test_client_never_opens_the_exported_weights(tmp_path):
    model, x = user_net("resnet_like")
    masks = {"layer1.relu@1": torch.rand(8, 16, 16, generator=torch.Generator().manual_seed(2)) < 0.5}
    folder = str(tmp_path / "private")
    pibench.export(model, x, folder, masks=masks)
    opened = tmp_path / "client_opens.txt"
    session = SessionConfig(prefixes={"client": [sys.executable, "-c", AUDIT_WRAPPER, str(opened)]})
    (result,) = bench_models([folder], BenchOptions(repeats=1, samples=8, batch=8, networks=LAN, session=session))
    row = result.rows[0]
    assert row.error == "" and row.mpc_agreement >= 0.99 and row.relus == hook_count(model, x) - int(
        (~masks["layer1.relu@1"]).sum())
    paths = opened.read_text().splitlines()
    assert any(p.endswith("program.json") for p in paths)  # the client ran from the public program
    assert not [p for p in paths if p.endswith(WEIGHTS_FILE) or p.startswith(folder)]


def test_count_and_a_cost_only_sweep_take_a_program_folder(tmp_path):
    model, x = user_net("mobilenet_like")
    pibench.export(model, x, tmp_path / "models" / "mine")
    out = run_cli("count", str(tmp_path / "models" / "mine"), "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    counted = json.loads(out.stdout)
    assert counted["total_relus"] == hook_count(model, x)
    assert [layer["name"] for layer in counted["layers"]][0] == "features.2"
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"run": "mine", "networks": ["lan"], "repeats": 1, "samples": 1,
                                      "results_dir": str(tmp_path / "results"), "models_dir": str(tmp_path / "models"),
                                      "cost_only": [{"model": str(tmp_path / "models" / "mine")}]}))
    run_dir = run_sweep(config, report=False)
    from pibench.results import load_results

    rows = load_results(run_dir)
    assert list(rows["model"]) == ["mine"] and rows["error"].isna().all()
    assert int(rows["relus"].iloc[0]) == hook_count(model, x)


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- measure example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README's measure example is missing"
    return match.group(1)


def test_readme_measure_example_runs_as_printed(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    df = namespace["df"]
    assert list(df["network"]) == ["lan", "wan"]
    for column in ("latency_s_median", "bytes_per_party", "rounds", "mpc_agreement"):
        assert df[column].notna().all(), column
    assert (df["mpc_agreement"] >= 0.99).all() and "latency_s_median" in capsys.readouterr().out
