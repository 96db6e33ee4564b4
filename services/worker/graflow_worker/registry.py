"""The allowlist of task functions: every ``@task`` found in the configured modules.

This is the only code a worker ever runs; an envelope names a task type, never code.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from graflow.dsl import TaskFunc
from graflow_runtime.errors import ConfigurationError


class RegistryError(ConfigurationError):
    """The configured task modules can't be loaded into a consistent registry."""


@dataclass(frozen=True)
class Registry(Mapping[str, TaskFunc]):
    """Task type name -> task function, and the module each came from."""

    tasks: Mapping[str, TaskFunc]
    modules: Mapping[str, str]

    def __getitem__(self, name: str) -> TaskFunc:
        return self.tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def task_types(self) -> list[str]:
        return sorted(self.tasks)


def load_registry(module_names: Iterable[str]) -> Registry:
    """Import each module and collect the :class:`TaskFunc` objects among its attributes.

    Raises :class:`RegistryError` when a module does not import, when two different functions share
    a task name, or when no task is found at all.
    """
    tasks: dict[str, TaskFunc] = {}
    origin: dict[str, str] = {}
    names = list(module_names)
    for module_name in names:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported with the module name
            raise RegistryError(
                f"task module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        for value in vars(module).values():
            if not isinstance(value, TaskFunc):
                continue
            known = tasks.get(value.name)
            if known is not None and known.fn is not value.fn:
                raise RegistryError(
                    f"task name {value.name!r} is defined twice: by {_where(known)} (found in module "
                    f"{origin[value.name]!r}) and by {_where(value)} (found in module {module_name!r}); "
                    "give one of them another name with @task('other_name')"
                )
            if known is None:
                tasks[value.name] = value
                origin[value.name] = module_name
    if not tasks:
        raise RegistryError(
            f"no @task functions found in task modules {names}; a worker needs at least one task"
        )
    return Registry(tasks=tasks, modules=origin)


def _where(task: TaskFunc) -> str:
    return f"{getattr(task.fn, '__module__', '?')}.{getattr(task.fn, '__qualname__', task.name)}"
