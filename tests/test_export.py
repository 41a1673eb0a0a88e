"""Bring your own model: `pibench.export` of models pibench does not define, ONNX import, and their bad inputs.

The architectures the README names (MobileNetV2-, SqueezeNet- and ResNet-like) are rebuilt from their
defining blocks in tests/helpers.py (USER_NETS; why: there).
"""

import json
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import pibench
from pibench.modelfolder.folder import (CARD_FILE, MASKS_FILE, PRIVATE_CARD_FILE, PROGRAM_FILE, WEIGHTS_FILE, CheckpointError,
                                load_card)
from pibench.modelfolder.export import load_program
from pibench.mpc.backend import run_plain
from pibench.mpc.compiler import compile_model
from pibench.mpc.program import CompileError, program_from_json, program_to_json
from pibench.modelfolder.onnx_import import SUPPORTED_OPS, import_onnx, load_onnx, program_from_onnx

from helpers import USER_NETS, WithGelu, hook_count, onnx_file, randomize, run_cli, user_net


class Head(nn.Module):
    """The rest of the op list: stand-alone BN (2d and 1d), mean over (2, 3), view, functional ReLUs and dropout."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6, 12)
        self.bn1d = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12 + 6, num_classes)

    def forward(self, x):
        x = self.pool(self.conv(x))
        x = x + x  # BN after an add: stand-alone
        y = F.relu(self.bn(x))
        g = y.mean((2, 3))
        h = torch.relu(self.bn1d(self.fc1(x.mean(dim=(-2, -1)))))
        h = F.dropout(h, 0.2, training=self.training)
        z = torch.cat([h, g], dim=1)
        return self.fc2(z.view(z.size(0), -1))


@pytest.mark.parametrize("name", sorted(USER_NETS))
def test_program_computes_each_architecture_and_counts_its_relus(name):
    model, x = user_net(name)
    program = compile_model(model, tuple(x.shape[1:]))
    batch = torch.randn(4, *x.shape[1:]) * 3  # past ReLU6's upper bound
    with torch.no_grad():
        assert torch.allclose(run_plain(program, batch), model(batch), atol=1e-5)
    assert program.relus == hook_count(model, x)


def test_every_listed_op_compiles():
    model = randomize(Head())
    program = compile_model(model, (3, 9, 9))
    kinds = [op.kind for op in program.ops]
    assert {"concat", "affine", "avgpool", "flatten", "maxpool"} <= set(kinds)
    assert kinds.count("affine") == 2  # BatchNorm2d after an add, BatchNorm1d after a linear
    assert next(op for op in program.ops if op.kind == "maxpool").attrs["ceil_mode"] is True
    batch = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        assert torch.allclose(run_plain(program, batch), model(batch), atol=1e-5)


@pytest.mark.parametrize("name", sorted(USER_NETS))
def test_export_and_onnx_import_give_the_same_program(name, tmp_path):
    model, x = user_net(name)
    card = pibench.export(model, x, tmp_path / "exported", dataset="random")
    imported = import_onnx(onnx_file(model, x, tmp_path / "m.onnx"), tmp_path / "imported")
    a = load_program(tmp_path / "exported", card, weights=True)
    b = load_program(tmp_path / "imported", imported, weights=True)
    assert a.fingerprint() == b.fingerprint() == compile_model(model, tuple(x.shape[1:])).fingerprint()
    assert a.relus == b.relus == card.relus == imported.relus == hook_count(model, x)
    batch = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        assert torch.allclose(run_plain(b, batch), model(batch), atol=1e-4)
    assert card.provenance["source"] == "export" and imported.provenance["source"] == "onnx"
    assert imported.provenance["onnx_version"] and len(imported.provenance["source_sha256"]) == 64


def test_folder_round_trip_public_part_has_no_weights(tmp_path):
    model, x = user_net("resnet_like")
    masks = {"layer1.relu": torch.rand(8, 16, 16, generator=torch.Generator().manual_seed(1)) < 0.3}
    card = pibench.export(model, x, tmp_path / "m", masks=masks, name="mine", dataset="digits", accuracy=91.5)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([CARD_FILE, PROGRAM_FILE, MASKS_FILE,
                                                                         PRIVATE_CARD_FILE, WEIGHTS_FILE])
    public_card = json.loads((tmp_path / "m" / CARD_FILE).read_text())
    private_card = json.loads((tmp_path / "m" / PRIVATE_CARD_FILE).read_text())
    assert "provenance" not in public_card and "accuracy" not in public_card and "name" not in public_card
    assert private_card["provenance"]["source"] == "export" and len(private_card["provenance"]["source_sha256"]) == 64
    assert private_card["provenance"]["class"] == "helpers.ResNetLike"
    assert load_card(tmp_path / "m") == card
    assert (card.name, card.dataset, card.accuracy, card.arch) == ("mine", "digits", 91.5, "program")
    doc = json.loads((tmp_path / "m" / PROGRAM_FILE).read_text())  # plain JSON, no tensors
    assert doc["format"] == "pibench-program/1" and len(doc["ops"]) == len(compile_model(model, (3, 32, 32)).ops)
    public = load_program(tmp_path / "m", card, weights=False)
    full = load_program(tmp_path / "m", card, weights=True)
    assert not public.has_weights and full.has_weights
    assert public.fingerprint() == full.fingerprint() == compile_model(model, (3, 32, 32), masks).fingerprint()
    relu = {op.layer: op for op in full.ops if op.kind == "relu"}
    assert relu["layer1.relu"].relus == int(masks["layer1.relu"].sum())
    assert "index" not in relu["layer1.relu@1"].attrs  # the second call of the same module: its own layer
    assert card.relus == full.relus == sum(layer["relus"] for layer in card.layers)


def test_json_round_trip_checks_masks_and_weights():
    model, x = user_net("squeezenet_like")
    program = compile_model(model, (3, 33, 33), {"features.1": torch.rand(8, 16, 16) < 0.5})
    text, masks = program_to_json(program)
    assert list(masks) == ["features.1"]
    assert program_from_json(text, masks).fingerprint() == program.fingerprint()
    with pytest.raises(ValueError, match=r"op 1 \(features.1\) needs a kept-ReLU mask of shape \(8, 16, 16\)"):
        program_from_json(text, {})
    with pytest.raises(ValueError, match=r"weight 0.weight \(features.0\): expected shape \(8, 3, 3, 3\)"):
        program_from_json(text, masks, {"0.weight": torch.zeros(1), "0.bias": torch.zeros(8)})


class LearnableAlpha(nn.Module):
    """SNL's per-position ReLU layer (its official code's shape): alphas (1, C, H, W)."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.alphas = nn.Parameter(torch.ones(1, channels, size, size))

    def forward(self, x):
        return F.relu(x) * self.alphas.expand_as(x) + (1 - self.alphas.expand_as(x)) * x


class SnlNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.alpha1 = LearnableAlpha(4, 8)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.alpha2 = LearnableAlpha(4, 8)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        out = self.alpha2(self.conv2(self.alpha1(self.conv1(x))))
        return self.fc(out.view(out.size(0), -1))


def test_snl_alphas_give_the_masks_snls_code_would(tmp_path):
    model = SnlNet().eval()
    g = torch.Generator().manual_seed(0)
    searched = {name: torch.rand(1, 4, 8, 8, generator=g) * 0.03 for name in ("alpha1", "alpha2")}
    with torch.no_grad():
        for name, alphas in searched.items():  # SNL's line 11: alpha > threshold (0.01) -> 1, else 0
            getattr(model, name).alphas.copy_((alphas > 0.01).float())
    card = pibench.export(model, torch.randn(1, 3, 8, 8), tmp_path / "snl")
    program = load_program(tmp_path / "snl", card, weights=True)
    for name, alphas in searched.items():
        (op,) = [op for op in program.ops if op.layer == name]
        assert op.relus == int((alphas > 0.01).sum())
        assert torch.equal(op.attrs["index"], (alphas > 0.01).flatten().nonzero().flatten())
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(run_plain(program, x), model(x), atol=1e-5)
    with torch.no_grad():
        model.alpha1.alphas.copy_(searched["alpha1"])  # mid-search: not the function SNL's masks compute
    with pytest.raises(CompileError, match="alphas that are not binarized"):
        pibench.export(model, torch.randn(1, 3, 8, 8), tmp_path / "unbinarized")
    assert not (tmp_path / "unbinarized").exists()


class DataDependent(nn.Module):
    def forward(self, x):
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unsupported_op_untraceable_model_and_bad_mask_each_fail_in_one_line(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CompileError, match=r"unsupported op GELU at layer 'act'") as e:
        pibench.export(WithGelu(in_chans=3), x, tmp_path / "gelu")
    assert "\n" not in str(e.value) and not (tmp_path / "gelu").exists()
    with pytest.raises(CompileError, match=r"cannot trace DataDependent with torch.fx \(.*control flow") as e:
        pibench.export(DataDependent(), x, tmp_path / "dd")
    assert "\n" not in str(e.value) and not (tmp_path / "dd").exists()
    model, x = user_net("resnet_like")
    with pytest.raises(CompileError, match=r"the mask for layer 'layer1.relu' has shape \(8, 8, 8\) but the "
                                           r"layer's feature map is \(8, 16, 16\)") as e:
        pibench.export(model, x, tmp_path / "bad", masks={"layer1.relu": torch.ones(8, 8, 8, dtype=torch.bool)})
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()
    with pytest.raises(CompileError, match=r"masks given for \['layer9'\], which are not ReLU layers"):
        pibench.export(model, x, tmp_path / "bad", masks={"layer9": torch.ones(8, dtype=torch.bool)})


class SoftmaxInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 36, 10)

    def forward(self, x):
        return self.fc(torch.softmax(self.conv(x), 1).flatten(1))


@pytest.mark.integration
def test_import_cli_writes_a_folder_or_one_line_and_no_folder(tmp_path):
    model, x = user_net("mobilenet_like")
    good = onnx_file(model, x, tmp_path / "mobilenet.onnx")
    relu_names = [op.layer for op in program_from_onnx(load_onnx(good), {}).ops if op.kind == "relu"]
    masks = {relu_names[0]: torch.rand(8, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.25}
    save_file(masks, tmp_path / "masks.safetensors")
    ok = run_cli("import", good, "--out", str(tmp_path / "mnet"), "--masks", str(tmp_path / "masks.safetensors"))
    assert ok.returncode == 0, ok.stderr
    card = load_card(tmp_path / "mnet")
    assert card.relus == hook_count(model, x) - 2 * (8 * 16 * 16 - int(masks[relu_names[0]].sum()))

    bad = onnx_file(SoftmaxInside().eval(), torch.randn(1, 3, 8, 8), tmp_path / "softmax.onnx")
    line = one_line(run_cli("import", bad, "--out", str(tmp_path / "sm")))
    assert "unsupported ONNX op Softmax before the model's output (node '/Softmax')" in line
    assert "only a softmax at the very end can be dropped" in line and ", ".join(SUPPORTED_OPS) in line
    assert not (tmp_path / "sm").exists()

    (tmp_path / "text.onnx").write_text("this is not an onnx file\n")
    line = one_line(run_cli("import", str(tmp_path / "text.onnx"), "--out", str(tmp_path / "t")))
    assert "text.onnx: not a valid ONNX model" in line and not (tmp_path / "t").exists()
    data = (tmp_path / "mobilenet.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    line = one_line(run_cli("import", str(tmp_path / "cut.onnx"), "--out", str(tmp_path / "c")))
    assert "cut.onnx: not a valid ONNX model" in line and "truncated" in line and not (tmp_path / "c").exists()

    masks = {relu_names[0]: torch.ones(8, 15, 15, dtype=torch.bool)}
    save_file(masks, tmp_path / "wrong.safetensors")
    line = one_line(run_cli("import", good, "--out", str(tmp_path / "w"), "--masks",
                            str(tmp_path / "wrong.safetensors")))
    assert f"the mask for layer '{relu_names[0]}' has shape (8, 15, 15) but the layer's feature map is (8, 16, 16)" \
        in line and not (tmp_path / "w").exists()


def test_a_changed_program_or_mask_file_is_refused(tmp_path):
    model, x = user_net("squeezenet_like")
    masks = {"features.1": torch.rand(8, 16, 16, generator=torch.Generator().manual_seed(3)) < 0.5}
    card = pibench.export(model, x, tmp_path / "m", masks=masks)
    program_file = tmp_path / "m" / PROGRAM_FILE
    program_file.write_text(program_file.read_text().replace('"relus": 0', '"relus": 1', 1))
    with pytest.raises(CheckpointError, match=r"program\.json: program do not match the sha256 recorded"):
        load_program(tmp_path / "m", card, weights=False)
    pibench.export(model, x, tmp_path / "m", masks=masks)
    save_file({"features.1": torch.ones(8, 16, 16, dtype=torch.bool)}, tmp_path / "m" / MASKS_FILE)
    with pytest.raises(CheckpointError, match=r"masks\.safetensors: masks do not match the sha256"):
        load_program(tmp_path / "m", load_card(tmp_path / "m"), weights=False)


def test_onnx_stand_alone_batchnorm_is_an_affine_op(tmp_path):
    """A BatchNormalization that follows an add (not a conv) cannot be folded: it must become an affine op, and
    the imported program must compute the model (an importer that passed it through would be off by its scale)."""
    model, x = randomize(Head()), torch.randn(2, 3, 9, 9)
    graph = load_onnx(onnx_file(model, x, tmp_path / "head.onnx"))
    assert sum(node.op_type == "BatchNormalization" for node in graph.graph.node) == 2
    program = program_from_onnx(graph, {})
    assert [op.kind for op in program.ops].count("affine") == 2
    batch = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        assert torch.allclose(run_plain(program, batch), model(batch), atol=1e-5)
