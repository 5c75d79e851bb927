"""The task registry: ``task`` name in a run config -> the module and class that implement it.

Adding a task = a new module in this package with a :class:`~.base.Task` subclass + one line here.
Modules are imported only when their task is used.
"""

from __future__ import annotations

import importlib

from ..config import ConfigError
from .base import ClassificationTask, EvalResult, Task

TASKS: dict[str, str] = {
    "sentiment": "hf_sparse.lab.finetune.tasks.sentiment:SentimentTask",
    "image": "hf_sparse.lab.finetune.tasks.image:ImageTask",
    "translation": "hf_sparse.lab.finetune.tasks.seq2seq:TranslationTask",
    "summarization": "hf_sparse.lab.finetune.tasks.seq2seq:SummarizationTask",
}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """A new instance of the task registered as ``name``; :class:`ConfigError` listing the tasks if unknown."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(task_names())}")
    module_name, _, class_name = TASKS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["TASKS", "ClassificationTask", "EvalResult", "Task", "get_task", "task_names"]
