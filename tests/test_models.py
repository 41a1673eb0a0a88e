import json

import pytest
import torch

from pibench.cli import main
from pibench.models import create_model, list_models
from pibench.models.resnet import DRD_CONFIGS
from pibench.relu import MaskedReLU, count_relus, masked_relus, relu_counts

EXPECTED_RELUS = {
    "resnet18": 557_056,
    "resnet18_snl": 491_520,
    "wrn22_8": 1_359_872,
    "drd_c100_230k": 229_376,
    "drd_c100_115k": 114_688,
    "drd_c100_57k": 57_344,
    "drd_c100_49k": 49_152,
    "drd_c100_29k": 28_672,
    "drd_c100_14k": 14_336,
    "drd_c100_12k": 12_288,
    "drd_c100_7k": 7_168,
    "drd_tiny_918k": 917_504,
    "drd_tiny_459k": 458_752,
    "drd_tiny_393k": 393_216,
    "drd_tiny_197k": 196_608,
    "drd_tiny_229k": 229_376,
    "drd_tiny_115k": 114_688,
    "drd_tiny_98k": 98_304,
    "drd_tiny_57k": 57_344,
    "drd_tiny_49k": 49_152,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_RELUS))
def test_reference_relu_counts(name):
    assert count_relus(create_model(name)) == EXPECTED_RELUS[name]


def test_every_drd_config_is_registered_and_checked():
    assert set(DRD_CONFIGS) <= set(EXPECTED_RELUS)
    assert set(list_models("drd_*")) == set(DRD_CONFIGS)


def test_resnet18_stage_counts_and_64px():
    counts = {c.name: c.relus for c in relu_counts(create_model("resnet18"))}
    assert counts["relu"] == 65_536
    stage_sums = [sum(v for k, v in counts.items() if k.startswith(f"layers.{s}.")) for s in range(4)]
    assert stage_sums == [262_144, 131_072, 65_536, 32_768]
    assert len(counts) == 17
    assert count_relus(create_model("resnet18", input_size=64)) == 2_228_224


def test_wrn_final_relu_variant():
    assert count_relus(create_model("wrn22_8", final_relu=True)) == 1_392_640


@pytest.mark.parametrize("name", ["resnet18", "wrn22_8", "vgg16", "resnet_digits", "cnn_digits", "drd_c100_7k"])
def test_models_run_forward(name):
    model = create_model(name, num_classes=7).eval()
    c, s = model.pibench_args["in_chans"], model.pibench_args["input_size"]
    assert model(torch.randn(2, c, s, s)).shape == (2, 7)


def test_vgg_avg_pool_option():
    model = create_model("vgg16", pool="avg")
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert count_relus(model) == count_relus(create_model("vgg16"))


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError, match="Known: .*resnet18"):
        create_model("resnet19")
    with pytest.raises(KeyError, match="Did you mean resnet18"):
        create_model("resnet1")


def test_masked_relu_matches_hand_reference_batch():
    torch.manual_seed(0)
    layer = MaskedReLU()
    layer.mask = torch.rand(3, 4, 5) > 0.5
    x = torch.randn(6, 3, 4, 5)
    out = layer(x)
    expected = x.clone()
    for b in range(6):
        for c in range(3):
            for h in range(4):
                for w in range(5):
                    if layer.mask[c, h, w]:
                        expected[b, c, h, w] = max(x[b, c, h, w].item(), 0.0)
    assert torch.equal(out, expected)
    assert layer.relus == int(layer.mask.sum())


def test_masked_relu_all_true_is_relu_all_false_is_identity():
    layer = MaskedReLU()
    x = torch.randn(4, 2, 3, 3)
    layer.mask = torch.ones(2, 3, 3, dtype=torch.bool)
    assert torch.equal(layer(x), torch.relu(x))
    layer.mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    assert torch.equal(layer(x), x)


def test_masked_relu_rejects_wrong_input_shape():
    layer = MaskedReLU()
    layer.mask = torch.ones(2, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="per-sample shape"):
        layer(torch.randn(1, 2, 4, 4))


def test_masks_follow_model_to_state_dict():
    model = create_model("resnet_digits")
    layers = masked_relus(model)
    assert all(f"{name}.mask" in model.state_dict() for name in layers)


def test_count_cli_json(capsys):
    assert main(["count", "resnet18", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "resnet18"
    assert out["total_relus"] == 557_056
    assert out["layers"][0] == {"name": "relu", "shape": [64, 32, 32], "relus": 65_536}
    assert sum(layer["relus"] for layer in out["layers"]) == 557_056


def test_count_cli_input_size_and_table(capsys):
    assert main(["count", "resnet18", "--input-size", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_relus"] == 2_228_224
    assert main(["count", "drd_c100_49k"]) == 0
    assert "49,152" in capsys.readouterr().out


def test_count_cli_unknown_model(capsys):
    assert main(["count", "resnet19"]) == 2
    assert "unknown model 'resnet19'" in capsys.readouterr().err
