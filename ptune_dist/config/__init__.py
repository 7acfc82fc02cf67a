from .load import from_yaml, load_config, to_yaml, validate
from .schema import DataConfig, MethodConfig, ModelConfig, RunConfig, TaskConfig, TrainConfig

__all__ = [
    "load_config",
    "validate",
    "to_yaml",
    "from_yaml",
    "RunConfig",
    "ModelConfig",
    "MethodConfig",
    "TaskConfig",
    "DataConfig",
    "TrainConfig",
]
