"""uniform_random: every ReLU layer keeps the same fraction of its ReLUs, at random positions, then fine-tunes.

The naive baseline a ReLU-allocation method has to beat: no sensitivity, no search.
"""

import copy
from dataclasses import dataclass

from pibench.linearize import save_linearized, train_config
from pibench.linearize.senet import allocate, random_masks
from pibench.relu import relu_counts, set_masks
from pibench.train import evaluate, fit


@dataclass
class Settings:
    epochs: int = 5  # fine-tuning with the masks fixed (0: none)
    lr: float = 0.01
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    schedule: str = "cosine"


def run(teacher, budgets, out_folders, settings):
    cards = []
    for budget, out in zip(budgets, out_folders):
        model = copy.deepcopy(teacher.model)
        layers = relu_counts(model)
        sizes = [layer.size for layer in layers]
        counts = allocate(budget, sizes, weights=sizes)  # in proportion to each layer's size
        shapes = {layer.name: layer.shape for layer in layers}
        set_masks(model, random_masks(shapes, dict(zip(shapes, counts)), teacher.seed))
        if settings.epochs:
            fit(model, teacher.train_loader, None, train_config(teacher, settings, settings.epochs),
                device=teacher.device, desc="uniform_random")
        cards.append(save_linearized(
            model, out, teacher, method="uniform_random", budget=budget,
            accuracy=evaluate(model, teacher.test_loader, teacher.device), settings=settings,
            method_info={"kept_per_layer": dict(zip(shapes, counts))}, budget_reached="uniform allocation"))
    return cards
