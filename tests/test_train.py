import pytest
import torch

from pibench.modelfolder.folder import load_model
from pibench.data import make_loaders
from pibench.models import create_model
from pibench.train import Callback, TrainConfig, at_loss, evaluate, fit, kd_loss, train_baseline


def test_kd_loss_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(4, 10)
    assert float(kd_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(a, torch.randn(4, 10))) > 0


def test_at_loss_ignores_scale_and_pools_larger_teacher_maps():
    f = torch.rand(2, 8, 4, 4)
    assert float(at_loss([f], [3 * f])) == pytest.approx(0.0, abs=1e-7)
    assert float(at_loss([f], [torch.rand(2, 16, 8, 8)])) > 0
    with pytest.raises(ValueError, match="matching features"):
        at_loss([f], [f, f])


def _loaders():
    return make_loaders("digits", batch_size=32, seed=0, train_subset=256)


@pytest.mark.integration
def test_fit_learns_digits():
    train, test = _loaders()
    model = create_model("resnet_digits")
    history = fit(model, train, test, TrainConfig(epochs=3, lr=0.05), device="cpu")
    assert len(history) == 3 and history[-1] > 70.0
    assert evaluate(model, test) == history[-1]


def test_kd_needs_a_teacher():
    train, test = _loaders()
    with pytest.raises(ValueError, match="teacher"):
        fit(create_model("cnn_digits"), train, test, TrainConfig(epochs=1, kd=0.5))


class _Crash(Callback):
    def __init__(self, at_epoch):
        self.at_epoch, self.epoch = at_epoch, 0

    def end_epoch(self, epoch, accuracy):
        self.epoch = epoch + 1
        return False

    def after_batch(self):
        if self.epoch == self.at_epoch:
            raise KeyboardInterrupt


@pytest.mark.integration
def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.05)
    torch.manual_seed(0)
    reference = create_model("cnn_digits")
    start = {k: v.clone() for k, v in reference.state_dict().items()}
    fit(reference, *_loaders(), cfg, device="cpu")

    model = create_model("cnn_digits")
    model.load_state_dict(start)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(model, *_loaders(), cfg, callback=_Crash(at_epoch=2), checkpoint=ckpt, device="cpu")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = create_model("cnn_digits")
    history = fit(resumed, *_loaders(), cfg, checkpoint=ckpt, device="cpu")
    assert len(history) == 3
    for k, v in reference.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k


@pytest.mark.integration
def test_train_baseline_writes_a_model_folder(tmp_path):
    card = train_baseline("cnn_digits", "digits", tmp_path / "base", epochs=1, lr=0.05, batch_size=64, train_subset=128)
    assert card.dataset == "digits" and card.method == "baseline" and card.relus == 4096
    assert card.accuracy is not None and card.provenance["train"]["epochs"] == 1
    assert not (tmp_path / "base" / "checkpoints").exists()
    _, model = load_model(tmp_path / "base")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.integration
def test_train_baseline_upsampled_digits(tmp_path):
    card = train_baseline(
        "resnet_digits", "digits", tmp_path / "b16", epochs=1, batch_size=64, train_subset=64, arch_kwargs={"input_size": 16}
    )
    assert card.input_shape == [1, 16, 16] and card.provenance["train"]["dataset_options"] == {"size": 16}


class _Epochs(Callback):
    def __init__(self):
        self.ran = 0

    def end_epoch(self, epoch, accuracy):
        self.ran += 1
        return False


@pytest.mark.integration
def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    cfg, ckpt = TrainConfig(epochs=1, lr=0.05), tmp_path / "run.pt"
    fit(create_model("cnn_digits"), *_loaders(), cfg, checkpoint=ckpt, device="cpu", run_key="budget 100")
    same, other = _Epochs(), _Epochs()
    fit(create_model("cnn_digits"), *_loaders(), cfg, callback=same, checkpoint=ckpt, device="cpu", run_key="budget 100")
    fit(create_model("cnn_digits"), *_loaders(), cfg, callback=other, checkpoint=ckpt, device="cpu", run_key="budget 50")
    assert (same.ran, other.ran) == (0, 1)
    assert torch.load(ckpt, weights_only=True)["run_key"] == "budget 50"


def test_sgd_nesterov_is_a_choice():
    """SNL's official fine-tuning uses plain momentum; the baseline keeps Nesterov."""
    from pibench.train import _optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    assert _optimizer(params, TrainConfig()).defaults["nesterov"] is True
    assert _optimizer(params, TrainConfig(nesterov=False)).defaults["nesterov"] is False
    assert _optimizer(params, TrainConfig(momentum=0.0)).defaults["nesterov"] is False


def test_kaiming_normal_init_and_deterministic_threads():
    """SNL's teacher recipe: conv weights ~ N(0, 2 / fan_out); training threads fixed, restored after."""
    import math

    from pibench.train import CPU_TRAIN_THREADS, deterministic, initialize

    model = create_model("resnet18", num_classes=10)
    initialize(model, "kaiming_normal")
    conv = model.layers[2][0].conv1  # 128 -> 256 channels, 3x3: its fan_out decides the spread
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    with pytest.raises(ValueError, match="unknown init"):
        initialize(model, "xavier")
    before = torch.get_num_threads()
    with deterministic("cpu"):
        assert torch.get_num_threads() == CPU_TRAIN_THREADS and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()
