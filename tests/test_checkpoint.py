import json

import pytest
import torch

from pibench.modelfolder.folder import (
    CARD_FILE,
    MASKS_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_model,
    load_public,
    public_hash,
    save_model,
)
from pibench.cli import main
from pibench.models import create_model
from pibench.relu import count_relus, get_masks, set_masks


def random_masked(name="resnet_digits", seed=0, density=0.3):
    torch.manual_seed(seed)
    model = create_model(name)
    set_masks(model, {k: torch.rand(v.shape) < density for k, v in get_masks(model).items()})
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    model = random_masked()
    folder = tmp_path / "m"
    save_model(model, folder, dataset="digits", method="senet", budget=2000, accuracy=0.9)
    return model, folder


def test_round_trip_identical_outputs_and_masks(saved):
    model, folder = saved
    card, loaded = load_model(folder)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    for k, v in get_masks(model).items():
        assert torch.equal(v, get_masks(loaded)[k])
    assert card.relus == count_relus(model) and card.method == "senet" and card.budget == 2000
    assert card.input_shape == [1, 8, 8] and card.num_classes == 10


def test_public_load_never_reads_weights(saved):
    _, folder = saved
    (folder / WEIGHTS_FILE).unlink()
    card, model = load_public(folder)
    assert count_relus(model) == card.relus


def test_missing_weights(saved):
    _, folder = saved
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: weights file is missing"):
        load_model(folder)


def test_truncated_weights(saved):
    _, folder = saved
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(folder)


def test_tampered_weights_fail_hash(saved):
    model, folder = saved
    from safetensors.torch import save_file

    from pibench.modelfolder.folder import weights_state

    state = weights_state(model)
    state["fc.bias"] = state["fc.bias"] + 1
    save_file(state, folder / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(folder)


def rewrite_masks(folder, change):
    """Edit the masks file and drop its recorded digest, so loading reaches the shape checks."""
    from safetensors.torch import load_file, save_file

    masks = load_file(folder / MASKS_FILE)
    change(masks)
    save_file(masks, folder / MASKS_FILE)
    card = json.loads((folder / CARD_FILE).read_text())
    card["masks_sha256"] = ""
    (folder / CARD_FILE).write_text(json.dumps(card))


def test_mask_wrong_shape(saved):
    _, folder = saved
    rewrite_masks(folder, lambda masks: masks.__setitem__("relu", torch.ones(3, 3, 3, dtype=torch.bool)))
    with pytest.raises(CheckpointError, match=r"masks\.safetensors: mask 'relu' has shape \(3, 3, 3\)"):
        load_public(folder)


def test_mask_wrong_count(saved):
    _, folder = saved
    rewrite_masks(folder, lambda masks: masks.pop("relu"))
    with pytest.raises(CheckpointError, match=r"missing \['relu'\]"):
        load_public(folder)


def test_unknown_architecture(saved):
    _, folder = saved
    card = json.loads((folder / CARD_FILE).read_text())
    card["arch"] = "resnet_digitz"
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(
        CheckpointError, match=r"model\.json: unknown model 'resnet_digitz'.*Did you mean resnet_digits"
    ):
        load_public(folder)


def test_corrupt_card_and_missing_folder(saved, tmp_path):
    _, folder = saved
    (folder / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_public(folder)
    with pytest.raises(CheckpointError, match="no such file"):
        load_public(tmp_path / "nowhere")


def test_weights_are_safetensors_not_pickle(saved):
    _, folder = saved
    head = (folder / WEIGHTS_FILE).read_bytes()[:8]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    assert not (folder / WEIGHTS_FILE).read_bytes().startswith(b"PK")  # torch.save zip


def test_public_hash_sees_masks_not_weights(tmp_path):
    a = random_masked(seed=1)
    save_model(a, tmp_path / "a", dataset="digits")
    with torch.no_grad():
        a.fc.bias.add_(1.0)
    save_model(a, tmp_path / "b", dataset="digits", accuracy=0.5)
    save_model(random_masked(seed=2), tmp_path / "c", dataset="digits")
    assert public_hash(tmp_path / "a") == public_hash(tmp_path / "b")
    assert public_hash(tmp_path / "c") != public_hash(tmp_path / "a")


def test_count_cli_on_model_folder(saved, capsys):
    model, folder = saved
    assert main(["count", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_relus"] == count_relus(model)


RECIPE = {"seed": 0, "epochs": 15, "lr": 0.05, "batch_size": 64, "teacher_weights_sha256": "ab" * 32}


def test_public_part_holds_no_recipe_seed_or_weight_digest(tmp_path):
    """A client with a public-data model's recipe and seed could retrain its weights bit for bit."""
    from pibench.modelfolder.folder import PRIVATE_CARD_FILE, PUBLIC_FIELDS, load_card

    folder = tmp_path / "m"
    card = save_model(random_masked(), folder, dataset="digits", method="senet", budget=2000, accuracy=97.5,
                      provenance=dict(RECIPE), method_info={"allocation": [1, 2]}, budget_reached="epoch 3")
    public = json.loads((folder / CARD_FILE).read_text())
    assert set(public) == set(PUBLIC_FIELDS)
    text = (folder / CARD_FILE).read_text() + (folder / MASKS_FILE).read_bytes().decode("latin-1")
    for secret in ("seed", "epochs", "lr", "batch_size", "sha256\": \"" + card.weights_sha256, RECIPE["teacher_weights_sha256"],
                   "accuracy", "allocation", "senet", "provenance"):
        assert secret not in text, secret
    assert card.weights_sha256 and card.weights_sha256 not in text
    private = json.loads((folder / PRIVATE_CARD_FILE).read_text())
    assert private["provenance"] == RECIPE and private["weights_sha256"] == card.weights_sha256
    assert (folder / PRIVATE_CARD_FILE).stat().st_mode & 0o077 == 0 and (folder / WEIGHTS_FILE).stat().st_mode & 0o077 == 0
    assert load_card(folder) == card  # the server's side reads both parts


def test_folder_from_before_the_split_loads_and_its_public_copy_is_stripped(saved):
    from pibench.modelfolder.folder import PRIVATE_CARD_FILE, PUBLIC_FIELDS, load_card, public_card_json

    _, folder = saved
    whole = {**json.loads((folder / PRIVATE_CARD_FILE).read_text()), **json.loads((folder / CARD_FILE).read_text())}
    whole["provenance"] = dict(RECIPE)
    (folder / CARD_FILE).write_text(json.dumps(whole))  # one model.json with every field, as before
    (folder / PRIVATE_CARD_FILE).unlink()
    card, _ = load_model(folder)
    assert card.method == "senet" and card.provenance == RECIPE
    assert set(json.loads(public_card_json(folder))) == set(PUBLIC_FIELDS)
    assert load_card(folder).name == "m"


def test_the_public_masks_are_readable_by_all_and_the_weights_by_the_owner_only(tmp_path):
    import stat

    from pibench.modelfolder.folder import MASKS_FILE, WEIGHTS_FILE, save_model
    from pibench.models import create_model

    save_model(create_model("cnn_digits"), tmp_path / "m", dataset="digits")
    assert stat.S_IMODE((tmp_path / "m" / MASKS_FILE).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m" / WEIGHTS_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("key, value", [("input_shape", [1, 16, 16]), ("relus", 1), ("num_classes", 9)])
def test_edited_card_fields_are_refused(saved, key, value):
    _, folder = saved
    card = json.loads((folder / CARD_FILE).read_text())
    card[key] = value
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=f"model.json: '{key}' does not match"):
        load_public(folder)


def test_edited_layer_shape_is_refused(saved):
    _, folder = saved
    card = json.loads((folder / CARD_FILE).read_text())
    card["layers"][0]["shape"] = [1, 2, 3]
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="'layers' does not match"):
        load_public(folder)
