"""The single training loop (accelerate), its config and the AdamW parameter groups."""

from loracle.training.config import TrainConfig
from loracle.training.loop import Callback, EpochSampler, TrainResult, make_accelerator, train
from loracle.training.optim import build_optimizer, param_groups

__all__ = ["Callback", "EpochSampler", "TrainConfig", "TrainResult", "build_optimizer", "make_accelerator",
           "param_groups", "train"]
