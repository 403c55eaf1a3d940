"""Sample entity app in the shapes of the SDK's entity samples, run unchanged on devhost.

Covers: a function-based counter (``@entity_trigger``: add / reset / get, the SDK's counter sample),
a class-based account (a class whose methods are the operations, dispatched by the entity function),
an orchestrator that signals and calls the counter (the SDK sample's orchestrator), one that mixes
activities, entity calls and ``task_all``, one whose entity operation fails, and an HTTP starter
that signals / reads entities through the durable client.
"""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()


@bp.entity_trigger(context_name="context", entity_name="Counter")
def counter(context: df.DurableEntityContext) -> None:
    """The SDK's counter sample: add / reset / get."""
    current_value = context.get_state(lambda: 0)
    operation = context.operation_name
    if operation == "add":
        current_value += context.get_input()
    elif operation == "reset":
        current_value = 0
    elif operation == "get":
        context.set_result(current_value)
    elif operation == "fail":
        raise ValueError(f"counter refused at {current_value}")
    context.set_state(current_value)


class Account:
    """Class-based entity: the state is the object's fields, each public method an operation."""

    def __init__(self, balance: int = 0, history: list[str] | None = None) -> None:
        self.balance = balance
        self.history = history or []

    def deposit(self, amount: int) -> int:
        self.balance += amount
        self.history.append(f"+{amount}")
        return self.balance

    def withdraw(self, amount: int) -> int:
        if amount > self.balance:
            raise ValueError(f"insufficient funds: {self.balance} < {amount}")
        self.balance -= amount
        self.history.append(f"-{amount}")
        return self.balance

    def get(self, _: Any = None) -> dict[str, Any]:
        return {"balance": self.balance, "history": self.history}

    def delete(self, _: Any = None) -> None:
        return None


@bp.entity_trigger(context_name="context", entity_name="Account")
def account(context: df.DurableEntityContext) -> None:
    """Dispatches operations to :class:`Account` methods; ``delete`` removes the entity."""
    state = Account(**context.get_state(dict))
    operation = context.operation_name
    method = getattr(state, operation, None)
    if operation.startswith("_") or method is None:
        raise ValueError(f"unknown operation {operation!r}")
    result = method(context.get_input())
    if operation == "delete":
        context.destruct_on_exit()
        return
    context.set_state(vars(state))
    context.set_result(result)


@bp.orchestration_trigger(context_name="context")
def counter_orchestrator(context: df.DurableOrchestrationContext):
    """The SDK sample: signal add 3, then call get."""
    entity_id = df.EntityId("Counter", context.get_input() or "myCounter")
    context.signal_entity(entity_id, "add", 3)
    state = yield context.call_entity(entity_id, "get")
    return state


@bp.orchestration_trigger(context_name="context")
def mixed_orchestrator(context: df.DurableOrchestrationContext):
    """Activities, signals, calls and a fan-out of calls interleaved (task ids must line up)."""
    key = context.get_input()
    counter_id = df.EntityId("Counter", key)
    account_id = df.EntityId("Account", key)
    first = yield context.call_activity("double", 5)
    context.signal_entity(counter_id, "add", first)
    balance = yield context.call_entity(account_id, "deposit", first)
    got = yield context.task_all([context.call_entity(counter_id, "get"),
                                  context.call_entity(account_id, "withdraw", 4),
                                  context.call_activity("double", 1)])
    context.signal_entity(counter_id, "reset")
    after = yield context.call_entity(counter_id, "get")
    snapshot = yield context.call_entity(account_id, "get")
    return {"first": first, "balance": balance, "got": got, "after": after, "snapshot": snapshot}


@bp.orchestration_trigger(context_name="context")
def failing_entity_orchestrator(context: df.DurableOrchestrationContext):
    """An entity operation that raises surfaces as an exception in the orchestrator."""
    account_id = df.EntityId("Account", context.get_input())
    try:
        yield context.call_entity(account_id, "withdraw", 1000)
    except Exception as exc:  # noqa: BLE001 - the SDK raises a plain Exception
        return {"caught": str(exc)}
    return {"caught": None}


@bp.orchestration_trigger(context_name="context")
def unknown_entity_orchestrator(context: df.DurableOrchestrationContext):
    """Calls an entity the app does not define."""
    result = yield context.call_entity(df.EntityId("Nope", "x"), "get")
    return result


@bp.activity_trigger(input_name="n")
def double(n: int) -> int:
    return 2 * n


@bp.route(route="counter/{key}/{op}", methods=["GET", "POST"])
@bp.durable_client_input(client_name="client")
async def counter_http(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Client side: POST signals the operation (JSON body as input), GET reads the state."""
    entity_id = df.EntityId("Counter", req.route_params["key"])
    if req.method == "POST":
        body = req.get_body()
        await client.signal_entity(entity_id, req.route_params["op"], json.loads(body) if body else None)
        return func.HttpResponse(status_code=202)
    state = await client.read_entity_state(entity_id)
    return func.HttpResponse(json.dumps({"exists": state.entity_exists, "state": state.entity_state}),
                             mimetype="application/json")


app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(bp)
