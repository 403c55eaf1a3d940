"""Sample Durable Functions app in the shapes of the SDK's public samples, run unchanged on devhost.

Covers: function chaining, fan-out/fan-in, human interaction (timer + external event with
``task_any``), a monitor with ``continue_as_new``, sub-orchestrations, retries
(``call_activity_with_retry`` on an activity that fails twice), an HTTP starter with the durable
client, a status API, and a blob-triggered starter.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()

_flaky_lock = threading.Lock()
_flaky_calls: dict[str, int] = {}


@bp.orchestration_trigger(context_name="context")
def hello_chain(context: df.DurableOrchestrationContext):
    """Function chaining: three activities in sequence."""
    first = yield context.call_activity("say_hello", "Tokyo")
    second = yield context.call_activity("say_hello", "Seattle")
    third = yield context.call_activity("say_hello", "London")
    return [first, second, third]


@bp.orchestration_trigger(context_name="context")
def chain(context: df.DurableOrchestrationContext):
    """A chain of N increments (N from the input), for benchmarks and crash tests."""
    params = context.get_input() or {}
    value = 0
    for step in range(int(params.get("n", 10))):
        value = yield context.call_activity("increment", {"value": value, "sleep": params.get("sleep", 0)})
        context.set_custom_status({"step": step + 1})
    return value


@bp.orchestration_trigger(context_name="context")
def fan_out_fan_in(context: df.DurableOrchestrationContext):
    """Fan-out/fan-in: square every number in parallel, then sum."""
    numbers = context.get_input()
    tasks = [context.call_activity("square", n) for n in numbers]
    results = yield context.task_all(tasks)
    return sum(results)


@bp.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    """Human interaction: wait for an 'Approval' event or time out on a durable timer."""
    timeout_s = float(context.get_input() or 1)
    deadline = context.current_utc_datetime + timedelta(seconds=timeout_s)
    timeout_task = context.create_timer(deadline)
    approval_task = context.wait_for_external_event("Approval")
    winner = yield context.task_any([approval_task, timeout_task])
    if winner == approval_task:
        timeout_task.cancel()
        return {"approved": approval_task.result}
    return {"approved": None, "timed_out": True}


@bp.orchestration_trigger(context_name="context")
def monitor(context: df.DurableOrchestrationContext):
    """Monitor: poll a few times on a short durable timer, looping with continue_as_new."""
    state = context.get_input() or {"round": 0, "rounds": 3}
    status = yield context.call_activity("check_round", state["round"])
    context.set_custom_status({"round": state["round"], "status": status})
    if state["round"] + 1 >= state["rounds"]:
        return {"rounds": state["round"] + 1, "last": status}
    yield context.create_timer(context.current_utc_datetime + timedelta(milliseconds=50))
    context.continue_as_new({"round": state["round"] + 1, "rounds": state["rounds"]})
    return None


@bp.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    """Sub-orchestrations: run hello_chain twice as children, in parallel, plus one sequential child."""
    first = yield context.call_sub_orchestrator("fan_out_fan_in", [1, 2, 3])
    children = [context.call_sub_orchestrator("hello_chain") for _ in range(2)]
    results = yield context.task_all(children)
    return {"sum": first, "chains": results}


@bp.orchestration_trigger(context_name="context")
def flaky_child(context: df.DurableOrchestrationContext):
    """A sub-orchestration that fails when its (un-retried) activity fails."""
    result = yield context.call_activity("flaky", {"key": context.get_input(), "failures": 1})
    return {"child": context.instance_id, "result": result}


@bp.orchestration_trigger(context_name="context")
def parent_retry(context: df.DurableOrchestrationContext):
    """call_sub_orchestrator_with_retry: the first child fails, the retried child succeeds."""
    options = df.RetryOptions(first_retry_interval_in_milliseconds=10, max_number_of_attempts=2)
    result = yield context.call_sub_orchestrator_with_retry("flaky_child", options, context.get_input())
    return result


@bp.orchestration_trigger(context_name="context")
def retrying(context: df.DurableOrchestrationContext):
    """Retries: an activity failing twice succeeds on the third attempt."""
    options = df.RetryOptions(first_retry_interval_in_milliseconds=20, max_number_of_attempts=3)
    key = context.get_input()
    result = yield context.call_activity_with_retry("flaky", options, {"key": key, "failures": 2})
    return result


@bp.orchestration_trigger(context_name="context")
def retry_fan_out(context: df.DurableOrchestrationContext):
    """Retries in parallel: three flaky activities, each failing once, plus a plain one, all at once."""
    options = df.RetryOptions(first_retry_interval_in_milliseconds=10, max_number_of_attempts=3)
    key = context.get_input()
    tasks = [context.call_activity_with_retry("flaky", options, {"key": f"{key}-{i}", "failures": 1})
             for i in range(3)]
    tasks.append(context.call_activity("say_hello", "Oslo"))
    results = yield context.task_all(tasks)
    after = yield context.call_activity("say_hello", "Bergen")
    return [*results, after]


@bp.orchestration_trigger(context_name="context")
def retry_exhausted(context: df.DurableOrchestrationContext):
    """Retries run out: the orchestrator catches the failure and reports it."""
    options = df.RetryOptions(first_retry_interval_in_milliseconds=10, max_number_of_attempts=2)
    key = context.get_input()
    try:
        yield context.call_activity_with_retry("flaky", options, {"key": key, "failures": 5})
    except Exception as exc:  # noqa: BLE001 - the sample reports any activity failure
        return {"failed": "flaky failure" in str(exc)}
    return {"failed": False}


@bp.orchestration_trigger(context_name="context")
def failing(context: df.DurableOrchestrationContext):
    """An orchestrator whose activity raises and is not caught."""
    yield context.call_activity("explode", "boom")
    return "unreachable"


@bp.activity_trigger(input_name="city")
def say_hello(city: str) -> str:
    """Greets a city."""
    return f"Hello {city}!"


@bp.activity_trigger(input_name="payload")
def increment(payload: dict) -> int:
    """Adds one, optionally after sleeping (to make crash tests land mid-chain)."""
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    return int(payload["value"]) + 1


@bp.activity_trigger(input_name="n")
async def square(n: int) -> int:
    """Squares a number (an async activity)."""
    return n * n


@bp.activity_trigger(input_name="round_no")
def check_round(round_no: int) -> str:
    """Monitor probe."""
    return f"checked-{round_no}"


@bp.activity_trigger(input_name="payload")
def flaky(payload: dict) -> str:
    """Fails the first ``failures`` times for a given key."""
    with _flaky_lock:
        count = _flaky_calls.get(payload["key"], 0) + 1
        _flaky_calls[payload["key"]] = count
    if count <= int(payload["failures"]):
        raise RuntimeError(f"flaky failure {count}")
    return f"ok after {count}"


@bp.activity_trigger(input_name="message")
def explode(message: str) -> str:
    """Always raises."""
    raise ValueError(message)


@bp.route(route="orchestrators/{function_name}", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """HTTP starter: starts the named orchestrator with the JSON body as input."""
    body = req.get_body()
    payload = json.loads(body) if body else None
    instance_id = await client.start_new(req.route_params["function_name"], None, payload)
    return client.create_check_status_response(req, instance_id)


@bp.route(route="manage/{instance_id}/{action}", methods=["GET", "POST"])
@bp.durable_client_input(client_name="client")
async def manage(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Exercises the client: status, list, filtered list, raise event, terminate."""
    instance_id = req.route_params["instance_id"]
    action = req.route_params["action"]
    if action == "status":
        status = await client.get_status(instance_id, show_history=True, show_input=True)
        body = status.to_json() if status else {"missing": True}
        body["history_len"] = len(getattr(status, "historyEvents", None) or [])
    elif action == "all":
        body = {"ids": sorted(s.instance_id for s in await client.get_status_all())}
    elif action == "running":
        statuses = await client.get_status_by(runtime_status=[df.OrchestrationRuntimeStatus.Running])
        body = {"ids": sorted(s.instance_id for s in statuses)}
    elif action == "raise":
        await client.raise_event(instance_id, req.params.get("event", "Approval"), req.get_json())
        body = {"raised": True}
    elif action == "terminate":
        await client.terminate(instance_id, req.params.get("reason", "stop"))
        body = {"terminated": True}
    else:
        return func.HttpResponse("unknown action", status_code=404)
    return func.HttpResponse(json.dumps(body, default=str), mimetype="application/json")


@bp.route(route="hello/{name}", methods=["GET"])
def hello_http(req: func.HttpRequest) -> func.HttpResponse:
    """A plain (sync) HTTP function."""
    return func.HttpResponse(f"hi {req.route_params['name']} {req.params.get('x', '')}".strip(),
                             headers={"X-Sample": "1"})


@bp.blob_trigger(arg_name="blob", path="adapters/{app}/{name}", connection="DEVHOST_SAMPLE_STORAGE")
@bp.durable_client_input(client_name="client")
async def on_blob(blob: func.InputStream, client: df.DurableOrchestrationClient) -> None:
    """Blob trigger: starts hello_chain with the blob's name and size, as the deploy app does."""
    await client.start_new("record_blob", None, {"name": blob.name, "size": len(blob.read())})


@bp.orchestration_trigger(context_name="context")
def record_blob(context: df.DurableOrchestrationContext):
    """Echoes the blob-trigger input."""
    return context.get_input()


timer_ticks: list[bool] = []


@bp.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
def yearly(timer: func.TimerRequest, context: func.Context) -> None:
    """Timer trigger (fires at host start here); records past_due and that a context arrived."""
    timer_ticks.append(bool(timer.past_due) or not context.invocation_id)


app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(bp)
