"""Mistakes a new user makes end in one line that says what to do (exit 2, nothing written), or are
handled with a note: a sweep's missing dataset folder, a final softmax, an unsupported op, a quiet
`make install`. (A failed session's exit status, dealer included: tests/test_multihost.py.)"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import pibench
from pibench.mpc.backend import run_plain
from pibench.mpc.program import CompileError
from pibench.mpc.rewrites import dropped_final
from pibench.modelfolder.spec import server_model

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, experiment: dict) -> subprocess.CompletedProcess:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run": "r", "experiments": [experiment]}))
    return run_cli("sweep", str(config), cwd=tmp_path, timeout=300)


@pytest.mark.integration
@pytest.mark.parametrize("data_dir, says", [
    ("data", "experiments[0].data_dir: no cifar-100-python/ in data (looked for {cwd}/data/cifar-100-python); unpack "
             "cifar100 there, or set data_dir to the folder that holds cifar-100-python/"),
    (None, "experiments[0].data_dir: cifar100 is read from a local folder holding cifar-100-python/; set data_dir to "
           "the folder that holds it (e.g. data_dir: data, with data/cifar-100-python/)"),
])
def test_a_sweep_whose_dataset_folder_is_missing_names_the_key_and_the_path(tmp_path, data_dir, says):
    out = sweep(tmp_path, {"dataset": "cifar100", "arch": "resnet18", "arch_args": {"num_classes": 100},
                           "data_dir": data_dir, "teacher": {"epochs": 1}, "budgets": []})
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line == f"pibench sweep: error: {tmp_path / 'c.yaml'}: " + says.format(cwd=tmp_path)
    assert "--data-dir" not in line  # a flag `sweep` does not have
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no results or models folder


class Classifier(nn.Module):
    def __init__(self, last: nn.Module | None = None, functional: str | None = None) -> None:
        super().__init__()
        self.conv, self.fc, self.last, self.functional = nn.Conv2d(3, 4, 3), nn.Linear(4 * 36, 10), last, functional

    def forward(self, x):
        y = self.fc(torch.relu(self.conv(x)).flatten(1))
        if self.functional:
            y = getattr(torch, self.functional)(y, dim=-1)
        return self.last(y) if self.last is not None else y


@pytest.mark.parametrize("model, kind", [(Classifier(nn.Softmax(dim=1)), "softmax"),
                                         (Classifier(nn.LogSoftmax(dim=-1)), "log_softmax"),
                                         (Classifier(functional="softmax"), "softmax")])
def test_a_final_softmax_is_dropped_with_a_note_and_the_argmax_is_unchanged(tmp_path, caplog, model, kind):
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    with caplog.at_level(logging.WARNING):
        pibench.export(model, x[:1], tmp_path / "m")
    assert f"dropped the final {kind} at layer" in caplog.text and "argmax unchanged" in caplog.text
    program = server_model(str(tmp_path / "m")).program
    assert dropped_final(program) == kind
    logits = run_plain(program, x)
    with torch.no_grad():
        model.last, model.functional = None, None  # the same model without its final softmax
        assert torch.allclose(logits, model(x), atol=1e-4)


def test_an_unsupported_op_names_the_op_the_layer_and_the_rewrite_without_an_fx_repr(tmp_path):
    class Gelu(Classifier):
        def forward(self, x):
            return self.fc(nn.functional.gelu(self.conv(x)).flatten(1))

    class SoftmaxInside(Classifier):
        def forward(self, x):
            return self.fc(torch.softmax(self.conv(x), 1).flatten(1))

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CompileError) as e:
        pibench.export(Gelu().eval(), x, tmp_path / "g")
    message = str(e.value)
    assert message.startswith("unsupported op function gelu at layer 'gelu': replace it with nn.ReLU")
    assert "%" not in message and "call_function" not in message and "\n" not in message  # no torch.fx node repr
    with pytest.raises(CompileError, match=r"unsupported op softmax before the model's output at layer 'softmax': "
                                           r"only a softmax at the very end can be dropped"):
        pibench.export(SoftmaxInside().eval(), x, tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_an_onnx_file_with_a_final_softmax_imports_to_the_logits(tmp_path):
    from pibench.modelfolder.onnx_import import import_onnx

    torch.manual_seed(0)
    model = Classifier(nn.Softmax(dim=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it needs no onnxscript
        torch.onnx.export(model, (x[:1],), str(tmp_path / "m.onnx"), dynamo=False)
    import_onnx(tmp_path / "m.onnx", tmp_path / "m")
    program = server_model(str(tmp_path / "m")).program
    assert dropped_final(program) == "softmax"
    model.last = None
    with torch.no_grad():
        assert torch.allclose(run_plain(program, x), model(x), atol=1e-4)


@pytest.mark.slow
def test_an_editable_install_prints_no_warning_of_the_projects_own(tmp_path):
    """What `make install` does to pibench itself, in a scratch venv (with the newest pip, which shows the
    build backend's warnings); dependencies are left out, they are not the project's."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.run(pip + ["install", "-q", "--upgrade", "pip"], check=True, capture_output=True, timeout=600)
    out = subprocess.run(pip + ["install", "-q", "--no-deps", "-e", str(ROOT)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = "\n".join(line for line in (out.stdout + out.stderr).splitlines() if "Location 'file:" not in line)
    assert "Warning" not in printed and "warning" not in printed, printed
