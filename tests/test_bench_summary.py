"""What `pibench bench` prints per model: protocol, online and offline cost, projections, agreement
with its sample count, where the rows went; a WARNING when MPC and plaintext disagree."""

from __future__ import annotations

import pytest

from pibench.commands.bench import _line, _warning
from pibench.results import load_results

from helpers import run_cli


def summary(**changes):
    s = {"model": "models/m", "error": "", "protocol": "crypten:fss", "relus": 7168, "latency_s_median": 0.07,
         "latency_s_p10": 0.065, "latency_s_p90": 0.08, "bytes_per_party": 1_300_000, "rounds": 19,
         "offline_s": 0.04, "offline_bytes": 15_500_000, "offline_bytes_client": 8_000_000,
         "offline_bytes_server": 7_500_000, "projected_latency_s": {"lan": 0.04, "wan": 0.81},
         "agreement": 1.0, "max_logit_error": 1.5e-4, "mpc_samples": 8, "measured": {}}
    return {**s, **changes}


def test_the_line_names_protocol_online_offline_projection_and_agreement_with_its_samples():
    line = _line(summary())
    assert line == ("models/m [crypten:fss]: 7,168 ReLUs; online 0.070 s (p10-p90 0.065-0.080), 1.30 MB/party, "
                    "19 rounds; offline 0.040 s, 15.50 MB (client 8.00 + server 7.50); projected lan 0.040 s, "
                    "wan 0.810 s; agreement 100.00% on 8 inputs, max logit error 1.5e-04")
    assert _warning(summary()) is None
    one = _line(summary(protocol="crypten:tfp", offline_s=None, offline_bytes=None, mpc_samples=1))
    assert "; no offline phase;" in one and "agreement 100.00% on 1 input (--samples N checks more)" in one
    assert "agreement not checked (--samples 0)" in _line(summary(agreement=None, mpc_samples=0))


def test_a_warning_when_agreement_is_under_100_percent_or_the_logit_error_past_the_tolerance():
    warning = _warning(summary(agreement=0.875))
    assert warning.startswith("WARNING models/m: MPC top-1 differs from plaintext on 12.50% of 8 inputs")
    warning = _warning(summary(max_logit_error=0.02))
    assert "max logit error 2.0e-02 exceeds crypten:fss's tolerance 1e-03" in warning
    assert _warning(summary(error="boom")) is None and _warning(summary(agreement=None)) is None


@pytest.mark.parties
def test_bench_prints_the_summary_and_where_the_rows_went(tmp_path):
    out = tmp_path / "r"
    done = run_cli("bench", "cnn_digits", "--repeats", "1", "--samples", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    model_line, rows_line = done.stdout.strip().splitlines()
    assert model_line.startswith("cnn_digits [crypten:dealer]: 4,096 ReLUs; online ")
    assert "; offline " in model_line and "; projected lan " in model_line and ", wan " in model_line
    assert "agreement 100.00% on 2 inputs (--samples N checks more)" in model_line
    assert rows_line.startswith(f"rows in {out / 'results.csv'}")
    assert set(load_results(out)["protocol"]) == {"crypten:dealer"}  # as --protocol and layers.csv name it
