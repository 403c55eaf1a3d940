"""Index of a v2 Python function app: which function has which trigger, and how to load the app.

The Functions host reads the same metadata (``app.get_functions()``: trigger type, bindings, the user
function); devhost keys everything off it so that any ``df.DFApp`` with blueprints runs unchanged.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.functions.decorators.function_app import Function


class AppLoadError(ImportError):
    """The ``module:attribute`` app could not be imported or is not a function app."""


class FunctionNotFoundError(LookupError):
    """No function with this name and trigger type is registered in the app."""


@dataclass(frozen=True)
class FunctionEntry:
    """One function of the app: its name, trigger, and every binding as the host sees them."""

    name: str
    function: Function
    trigger_type: str
    trigger: Any
    client_params: tuple[str, ...]

    @property
    def user_function(self) -> Any:
        """The callable the Python worker would invoke (the SDK's wrapper for orchestrators)."""
        return self.function.get_user_function()

    @property
    def trigger_param(self) -> str:
        """Name of the trigger's parameter in the user function."""
        return str(self.trigger.name)


@dataclass
class FunctionIndex:
    """Functions of an app grouped by trigger type."""

    orchestrators: dict[str, FunctionEntry] = field(default_factory=dict)
    activities: dict[str, FunctionEntry] = field(default_factory=dict)
    http: list[FunctionEntry] = field(default_factory=list)
    blob: list[FunctionEntry] = field(default_factory=list)
    timer: list[FunctionEntry] = field(default_factory=list)
    entities: dict[str, FunctionEntry] = field(default_factory=dict)  # keyed by lower-case name

    @classmethod
    def from_functions(cls, functions: Iterable[Function]) -> FunctionIndex:
        """Build the index from ``app.get_functions()``."""
        index = cls()
        for fn in functions:
            trigger = fn.get_trigger()
            trigger_type = str(trigger.get_binding_name()) if trigger is not None else ""
            clients = tuple(
                str(b.name) for b in fn.get_bindings() if str(b.get_binding_name()) == "durableClient"
            )
            entry = FunctionEntry(str(fn.get_function_name()), fn, trigger_type, trigger, clients)
            if trigger_type == "orchestrationTrigger":
                index.orchestrators[_declared_name(trigger, "orchestration", entry.name)] = entry
            elif trigger_type == "entityTrigger":  # EntityId lower-cases names, so lookups do too
                index.entities[_declared_name(trigger, "entity_name", entry.name).lower()] = entry
            elif trigger_type == "activityTrigger":
                index.activities[_declared_name(trigger, "activity", entry.name)] = entry
            elif trigger_type == "httpTrigger":
                index.http.append(entry)
            elif trigger_type == "blobTrigger":
                index.blob.append(entry)
            elif trigger_type == "timerTrigger":
                index.timer.append(entry)
        return index

    @classmethod
    def from_app(cls, app: Any) -> FunctionIndex:
        """Build the index from a ``FunctionApp`` / ``df.DFApp`` (once per app object).

        ``get_functions()`` can only be called once per app: a second call fails its duplicate-name
        check, so the index is cached per app.
        """
        if not hasattr(app, "get_functions"):
            raise AppLoadError(f"{app!r} is not a function app (no get_functions())")
        cached = _INDEX_CACHE.get(app)
        if cached is None:
            if getattr(app, "functions_bindings", None):
                app.functions_bindings = None  # someone indexed it already; let the check run afresh
            cached = _INDEX_CACHE[app] = cls.from_functions(app.get_functions())
        return cached

    def orchestrator(self, name: str) -> FunctionEntry:
        """The orchestrator registered as ``name``."""
        try:
            return self.orchestrators[name]
        except KeyError:
            raise FunctionNotFoundError(f"orchestrator function '{name}' does not exist") from None

    def entity(self, name: str) -> FunctionEntry:
        """The entity function registered as ``name`` (case-insensitive, as entity ids are)."""
        try:
            return self.entities[name.lower()]
        except KeyError:
            raise FunctionNotFoundError(
                f"The function '{name}' doesn't exist, is disabled, or is not an entity function.") from None

    def activity(self, name: str) -> FunctionEntry:
        """The activity registered as ``name``."""
        try:
            return self.activities[name]
        except KeyError:
            raise FunctionNotFoundError(f"activity function '{name}' does not exist") from None


_INDEX_CACHE: weakref.WeakKeyDictionary[Any, FunctionIndex] = weakref.WeakKeyDictionary()


def _declared_name(trigger: Any, attribute: str, default: str) -> str:
    value = getattr(trigger, attribute, None)
    return str(value) if value else default


def load_app(spec: str, app_dir: str | Path | None = None) -> Any:
    """Import ``module:attribute`` (default attribute ``app``), with ``app_dir`` first on ``sys.path``."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if app_dir is not None and str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import app module '{module_name}': {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise AppLoadError(f"module '{module_name}' has no attribute '{attribute}'") from None


def decode_activity_input(input_json: str | None) -> Any:
    """Activity input as the worker's activity-trigger converter decodes it (non-JSON stays a string)."""
    from azure.functions._durable_functions import df_loads

    if input_json is None:
        return None
    try:
        return df_loads(input_json)
    except ValueError:
        return input_json


def encode_activity_output(value: Any) -> str:
    """Activity return value as the activity-trigger converter encodes it."""
    from azure.functions._durable_functions import df_dumps

    return df_dumps(value)


@dataclass(frozen=True)
class InvocationContext:
    """What the worker passes as ``context: func.Context`` (the fields user code reads)."""

    invocation_id: str
    function_name: str
    function_directory: str
    trace_context: Any = None
    retry_context: Any = None
    thread_local_storage: Any = None


def call_kwargs(entry: FunctionEntry, trigger_value: Any, client_json: str | None) -> dict[str, Any]:
    """Keyword arguments for the user function: trigger value, durable clients, ``context`` if declared."""
    kwargs: dict[str, Any] = {entry.trigger_param: trigger_value}
    for param in entry.client_params:
        if client_json is None:
            raise FunctionNotFoundError(f"function '{entry.name}' needs a durable client and none is served")
        kwargs[param] = client_json
    if "context" not in kwargs and "context" in _parameters(entry.user_function):
        kwargs["context"] = InvocationContext(uuid.uuid4().hex, entry.name,
                                              str(Path(entry.function.function_script_file).parent))
    return kwargs


def _parameters(fn: Any) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()
