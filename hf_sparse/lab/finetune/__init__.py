"""Fine-tuning (patched) Transformers models with ``accelerate``: run configs, the task registry, the
training loop and the metrics.json record. ``hf-sparse finetune`` (``python -m hf_sparse.lab.finetune``) is the command-line entry point."""

from .config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides
from .loop import Interrupted, run
from .models import minilm_path, resolve_pretrained
from .tasks import TASKS, ClassificationTask, EvalResult, Task, get_task, task_names

__all__ = [
    "TASKS", "ClassificationTask", "ConfigError", "DataConfig", "EvalResult", "Interrupted", "ModelConfig",
    "RunConfig", "Task", "TrainConfig", "apply_overrides", "get_task", "minilm_path", "resolve_pretrained", "run",
    "task_names",
]
