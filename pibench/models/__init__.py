"""Model zoo: one file per family, each builder registered by name."""

from pibench.models import resnet, vgg, wide_resnet  # noqa: F401  (registers the builders)
from pibench.models.registry import MODELS, create_model, list_models, model_defaults

__all__ = ["MODELS", "create_model", "list_models", "model_defaults"]
