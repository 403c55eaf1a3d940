"""Asyncio dispatcher: runs orchestration episodes, activities, timers, sub-orchestrations and entities.

One dispatcher task does all bookkeeping on the event loop. Each round it takes the activity results
that arrived, runs one episode for every instance with deliverable events (so one episode at a time
per instance), writes everything the round changed to the store in one transaction, and only then
starts the activities the round scheduled. Activities run in a thread pool (``async def`` activities
on the loop), timers are inbox events with a due time, external events and terminations are inbox
events written before the client call returns.

Entities: operation requests (from orchestrators' ``call_entity``/``signal_entity`` and client
signals) queue per entity; each round runs one batch per entity with queued requests through the
SDK's entity handler (the ``entityTrigger`` payload: ``self``, ``exists``, ``state``, ``batch``) and
writes the new state, the answers to calling orchestrations (``EventRaised`` named with the request
id, input the extension's ResponseMessage JSON) and the removal of the handled requests in the round's
transaction, so an entity operation is applied exactly once even across a crash.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devhost import history as h
from devhost.executor import execute
from devhost.functions import (
    FunctionIndex,
    FunctionNotFoundError,
    call_kwargs,
    decode_activity_input,
    encode_activity_output,
)
from devhost.history import Event
from devhost.planner import (
    EntityRequest,
    Plan,
    PlanState,
    UnsupportedActionError,
    continue_as_new_input,
    entity_request,
    is_retry_trigger,
    observe_event,
    plan_actions,
)
from devhost.store import (
    TERMINAL_STATUSES,
    Batch,
    EntityQueueRow,
    EntityRecord,
    InboxRow,
    InstanceRecord,
    Store,
    WorkRow,
)

log = logging.getLogger("devhost.worker")
ENTITY_BATCH_SIZE = 50  # the extension's MaxEntityOperationBatchSize default on the Consumption plan


def scheduler_id(name: str, key: str) -> str:
    """An entity's instance id as the SDK and the extension build it: ``@{name lower-cased}@{key}``."""
    return f"@{name.lower()}@{key}"


def parse_scheduler_id(entity_id: str) -> tuple[str, str]:
    """``(name, key)`` of ``@name@key`` (the key may contain ``@``)."""
    name, _, key = entity_id[1:].partition("@")
    return name, key


class InstanceNotFoundError(LookupError):
    """No instance with this id exists."""


class InstanceExistsError(RuntimeError):
    """An unfinished instance with this id already exists."""


class InstanceGoneError(RuntimeError):
    """The instance already completed, failed or was terminated."""


@dataclass
class _Live:
    """An unfinished instance held in memory (the store has the same state, written each round)."""

    record: InstanceRecord
    history: list[Event]
    plan: PlanState
    inbox: list[InboxRow] = field(default_factory=list)
    unsaved: set[int] = field(default_factory=set)


def _iso(when: datetime) -> str:
    return h.format_time(when)


class Worker:
    """Runs the orchestrations and activities of one function app against one :class:`Store`.

    All methods are called on the event loop; only activity bodies run in the thread pool.
    """

    def __init__(self, store: Store, functions: FunctionIndex, *, max_workers: int = 8,
                 client_binding: Callable[[], str | None] | None = None) -> None:
        self.store = store
        self.functions = functions
        self.client_binding = client_binding or (lambda: None)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="devhost-activity")
        self._live: dict[str, _Live] = {}
        self._ready: set[str] = set()
        self._dirty: set[str] = set()  # instances with inbox rows not yet written
        self._arrivals: list[tuple[WorkRow, Event]] = []
        self._to_start: list[WorkRow] = []
        self._waiters: dict[str, list[asyncio.Future[InstanceRecord]]] = {}
        self._next_row_id = store.max_row_id() + 1
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running_activities: set[asyncio.Future[Any]] = set()
        self._entity_queue: dict[str, list[EntityQueueRow]] = {}
        self._entities_ready: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume every unfinished instance from the store and start dispatching."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        for active in self.store.load_active():
            rec = active.record
            plan = PlanState.from_json(json.loads(rec.plan_json) if rec.plan_json else None)
            live = _Live(rec, active.history, plan, list(active.inbox))
            self._live[rec.id] = live
            for row in active.inbox:
                self._arm(row)
            self._to_start.extend(active.work)
        for row in self.store.load_entity_queue():
            self._enqueue_entity(row)
        self._start_pending_activities()
        if self._ready or self._entities_ready:  # work queued before the worker was
            self._wakeup.set()
        self._task = asyncio.create_task(self._dispatch(), name="devhost-dispatcher")

    async def stop(self) -> None:
        """Stop dispatching; activities still running finish in the background and are discarded."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- client operations -----------------------------------------------------------------------
    def start_new(self, name: str, instance_id: str | None = None, input_json: str | None = None,
                  *, parent: tuple[str, int] | None = None, batch: Batch | None = None) -> str:
        """Create an instance of orchestrator ``name``; written to the store before returning."""
        self.functions.orchestrator(name)
        instance_id = instance_id or uuid.uuid4().hex
        if instance_id in self._live:  # DTFx's OrchestrationAlreadyExistsException message
            status = self._live[instance_id].record.status
            raise InstanceExistsError(f"An Orchestration instance with the status {status} already exists.")
        now = h.utc_now()
        rec = InstanceRecord(instance_id, name, "Pending", input_json, None, None, _iso(now), _iso(now),
                             parent[0] if parent else None, parent[1] if parent else None, 0, None)
        own_batch = batch is None
        batch = batch if batch is not None else Batch()
        batch.instances.append(rec)
        for cleared in (batch.history_clear, batch.inbox_clear, batch.work_clear):
            cleared.append(instance_id)
        live = _Live(rec, [], PlanState())
        self._live[instance_id] = live
        row = self._post(live, h.new_execution_started_event(
            now, name, input_json, parent_instance_id=rec.parent_id))
        if own_batch:
            live.unsaved.discard(row.id)
            batch.inbox_add.append(row)
            self.store.apply(batch)
        return instance_id

    def raise_event(self, instance_id: str, event_name: str, input_json: str | None) -> None:
        """Deliver external event ``event_name`` to a running instance."""
        live = self._require_live(instance_id)
        self._post_saved(live, h.new_event_raised_event(h.utc_now(), event_name, input_json))

    def terminate(self, instance_id: str, reason: str | None) -> None:
        """Terminate a running instance."""
        live = self._require_live(instance_id)
        self._post_saved(live, h.new_execution_terminated_event(h.utc_now(), reason or ""))

    def signal_entity(self, name: str, key: str, operation: str, input_json: str | None) -> str:
        """Queue a client signal (no answer) for entity ``name``/``key``; written before returning.

        Raises :class:`FunctionNotFoundError` when the app has no such entity function, as the
        extension's ``SignalEntityAsync`` does for its own app. Returns the request id.
        """
        self.functions.entity(name)
        request = entity_request(operation, input_json, signal=True, parent=None, now=h.utc_now())
        row = EntityQueueRow(self._new_row_id(), scheduler_id(name, key), request)
        self.store.apply(Batch(entity_queue_add=[row]))
        self._enqueue_entity(row)
        return str(request["id"])

    def entity_idle(self, entity_id: str) -> bool:
        """Whether no request is queued for the entity (tests wait on this)."""
        return not self._entity_queue.get(entity_id)

    async def wait_for(self, instance_id: str, timeout: float | None = None) -> InstanceRecord:
        """Wait until the instance reaches a terminal status and return its record."""
        if instance_id not in self._live:
            rec = self.store.get(instance_id)
            if rec is None:
                raise InstanceNotFoundError(f"no instance with ID '{instance_id}'")
            if rec.status in TERMINAL_STATUSES:
                return rec
        fut: asyncio.Future[InstanceRecord] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(instance_id, [])
        waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if fut in waiters:
                waiters.remove(fut)

    def is_running(self, instance_id: str) -> bool:
        """Whether the instance is unfinished."""
        return instance_id in self._live

    # -- internals: inbox ------------------------------------------------------------------------
    def _require_live(self, instance_id: str) -> _Live:
        live = self._live.get(instance_id)
        if live is not None:
            return live
        if self.store.get(instance_id) is None:
            raise InstanceNotFoundError(f"no instance with ID '{instance_id}'")
        raise InstanceGoneError(f"instance '{instance_id}' is no longer running")

    def _new_row_id(self) -> int:
        row_id = self._next_row_id
        self._next_row_id += 1
        return row_id

    def _post(self, live: _Live, event: Event, visible_at: float = 0.0) -> InboxRow:
        """Queue ``event`` for ``live`` (written to the store at the end of the round)."""
        row = InboxRow(self._new_row_id(), live.record.id, visible_at, event)
        live.inbox.append(row)
        live.unsaved.add(row.id)
        self._dirty.add(live.record.id)
        self._arm(row)
        return row

    def _post_saved(self, live: _Live, event: Event) -> None:
        row = InboxRow(self._new_row_id(), live.record.id, 0.0, event)
        self.store.apply(Batch(inbox_add=[row]))
        live.inbox.append(row)
        self._arm(row)

    def _arm(self, row: InboxRow) -> None:
        delay = row.visible_at - time.time()
        if delay <= 0:
            self._mark_ready(row.instance_id)
        elif self._loop is not None:
            self._loop.call_later(delay + 0.001, self._mark_ready, row.instance_id)

    def _enqueue_entity(self, row: EntityQueueRow) -> None:
        self._entity_queue.setdefault(row.entity_id, []).append(row)
        self._entities_ready.add(row.entity_id)
        if self._wakeup is not None:
            self._wakeup.set()

    def _mark_ready(self, instance_id: str) -> None:
        self._ready.add(instance_id)
        if self._wakeup is not None:
            self._wakeup.set()

    # -- internals: the dispatch round -----------------------------------------------------------
    async def _dispatch(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                self._round()
            except Exception:  # keep the host alive; the round's batch was not written
                log.exception("devhost dispatch round failed")
            self._start_pending_activities()

    def _round(self) -> None:
        now = h.utc_now()
        now_ts = time.time()
        batch = Batch()
        arrivals, self._arrivals = self._arrivals, []
        for work, event in arrivals:
            batch.work_delete.append(work.id)
            live = self._live.get(work.instance_id)
            if live is not None and live.record.execution == work.execution:
                self._post(live, event)
        ready, self._ready = self._ready, set()
        deferred = [instance_id for instance_id in ready
                    if instance_id in self._live and self._episode(self._live[instance_id], batch, now, now_ts)]
        entities, self._entities_ready = self._entities_ready, set()
        for entity_id in sorted(entities):
            self._entity_batch(entity_id, batch, now)
        dirty, self._dirty = self._dirty, set()
        for instance_id in dirty:
            live = self._live.get(instance_id)
            if live is not None and live.unsaved:
                batch.inbox_add.extend(r for r in live.inbox if r.id in live.unsaved)
                live.unsaved.clear()
        self.store.apply(batch)
        for instance_id in deferred:
            self._mark_ready(instance_id)

    def _episode(self, live: _Live, batch: Batch, now: datetime, now_ts: float) -> bool:
        """Run one episode with the due events; True when due events were held back for the next one."""
        due = [r for r in live.inbox if r.visible_at <= now_ts]
        if not due:
            if live.inbox:  # woken a little early for a timer (loop clock vs wall clock): wake again
                self._arm(min(live.inbox, key=lambda r: r.visible_at))
            return False
        terminated = next((r for r in due if r.event["EventType"] == h.EXECUTION_TERMINATED), None)
        if terminated is not None:
            self._consume(live, batch, list(live.inbox))
            events = [h.new_orchestrator_started_event(now), terminated.event]
            self._finish(live, batch, now, "Terminated", json.dumps(terminated.event.get("Input")), events)
            return False
        started = [r for r in due if r.event["EventType"] == h.EXECUTION_STARTED]
        if not started and not live.history:
            return False  # cannot happen: every execution's first inbox row is its ExecutionStarted
        triggers = [r for r in due if is_retry_trigger(live.plan, r.event)]
        held = {r.id for r in triggers}
        rest = [r for r in due if r.event["EventType"] != h.EXECUTION_STARTED and r.id not in held]
        chosen = started + triggers[:1] + rest
        self._consume(live, batch, chosen)
        rec = live.record
        new_events = [h.new_orchestrator_started_event(now)] + [r.event for r in chosen]
        pre = Plan()
        for row in chosen:
            pre.extend(observe_event(live.plan, row.event, rec.id, now))
        try:
            result = execute(self.functions, rec.name, rec.id, rec.input_json, live.history, new_events,
                             parent_instance_id=rec.parent_id, compact=True)
            if result.error is None and not result.is_done:
                pre.extend(plan_actions(live.plan, rec.id, result.actions, now))
                for request in pre.entity_requests:  # the extension's ThrowIfFunctionDoesNotExist
                    self.functions.entity(parse_scheduler_id(request.entity_id)[0])
        except (FunctionNotFoundError, UnsupportedActionError) as exc:
            self._finish(live, batch, now, "Failed", json.dumps(str(exc)), new_events)
            return False
        rec.custom_status_json = json.dumps(result.custom_status) if result.custom_status is not None else None
        if result.error is not None:
            output = json.dumps(f"Orchestrator function '{rec.name}' failed: {result.error}")
            self._finish(live, batch, now, "Failed", output, new_events)
            return False
        if result.is_done:
            again, next_input = continue_as_new_input(result.actions)
            if again:
                self._continue_as_new(live, batch, now, next_input)
            else:
                self._finish(live, batch, now, "Completed", json.dumps(result.output), new_events)
            return False
        first_new = len(live.history)
        live.history.extend(new_events)
        live.history.extend(pre.scheduled)
        live.history.append(h.new_orchestrator_completed_event(now))
        self._schedule(live, batch, pre, now)
        rec.status = "Running"
        rec.updated = _iso(now)
        rec.plan_json = json.dumps(live.plan.to_json())
        batch.history_append.extend((rec.id, n, live.history[n]) for n in range(first_new, len(live.history)))
        batch.instances.append(rec)
        return len(triggers) > 1

    def _consume(self, live: _Live, batch: Batch, rows: list[InboxRow]) -> None:
        ids = {r.id for r in rows}
        live.inbox = [r for r in live.inbox if r.id not in ids]
        for row_id in ids:
            if row_id in live.unsaved:
                live.unsaved.discard(row_id)
            else:
                batch.inbox_delete.append(row_id)

    def _schedule(self, live: _Live, batch: Batch, plan: Plan, now: datetime) -> None:
        rec = live.record
        for call in plan.activities:
            work = WorkRow(self._new_row_id(), rec.id, rec.execution, call.seq, call.name, call.input_json)
            batch.work_add.append(work)
            self._to_start.append(work)
        for timer in plan.timers:
            fire_at = h.format_time(timer.fire_at)
            self._post(live, h.new_timer_fired_event(timer.fire_at, timer.seq, fire_at), timer.fire_at.timestamp())
        for request in plan.entity_requests:
            self._queue_entity_request(request, batch)
        for sub in plan.sub_orchestrations:
            try:
                self.start_new(sub.name, sub.instance_id, sub.input_json, parent=(rec.id, sub.seq), batch=batch)
            except (FunctionNotFoundError, InstanceExistsError) as exc:
                self._post(live, h.new_sub_orchestration_failed_event(now, sub.seq, str(exc)))

    def _continue_as_new(self, live: _Live, batch: Batch, now: datetime, input_json: str | None) -> None:
        rec = live.record
        rec.execution += 1
        rec.input_json = input_json
        rec.status = "ContinuedAsNew"  # until the new execution's first episode
        rec.updated = _iso(now)
        live.plan = PlanState()
        rec.plan_json = json.dumps(live.plan.to_json())
        live.history = []
        batch.history_clear.append(rec.id)
        batch.work_clear.append(rec.id)
        stale = [r for r in live.inbox if r.event["EventType"] != h.EVENT_RAISED]
        self._consume(live, batch, stale)
        self._post(live, h.new_execution_started_event(now, rec.name, input_json,
                                                       parent_instance_id=rec.parent_id))
        batch.instances.append(rec)

    def _finish(self, live: _Live, batch: Batch, now: datetime, status: str, output_json: str,
                new_events: list[Event]) -> None:
        rec = live.record
        first_new = len(live.history)
        live.history.extend(new_events)
        if status != "Terminated":
            live.history.append(h.new_execution_completed_event(now, status, output_json))
        live.history.append(h.new_orchestrator_completed_event(now))
        rec.status = status
        rec.output_json = output_json
        rec.updated = _iso(now)
        if status == "Failed":
            log.warning("orchestration %s (%s) failed: %s", rec.id, rec.name, output_json[:500])
        batch.history_append.extend((rec.id, n, live.history[n]) for n in range(first_new, len(live.history)))
        batch.instances.append(rec)
        batch.inbox_clear.append(rec.id)
        batch.work_clear.append(rec.id)
        del self._live[rec.id]
        if rec.parent_id and rec.parent_seq is not None and rec.parent_id in self._live:
            parent = self._live[rec.parent_id]
            if status == "Completed":
                event = h.new_sub_orchestration_completed_event(now, rec.parent_seq, output_json)
            else:
                reason = json.loads(output_json) if output_json else status
                event = h.new_sub_orchestration_failed_event(
                    now, rec.parent_seq, f"Sub-orchestration '{rec.name}' ({rec.id}) {status.lower()}: {reason}")
            self._post(parent, event)
        for fut in self._waiters.pop(rec.id, []):
            if not fut.done():
                fut.set_result(rec)

    # -- internals: entities -----------------------------------------------------------------------
    def _queue_entity_request(self, request: EntityRequest, batch: Batch) -> None:
        row = EntityQueueRow(self._new_row_id(), request.entity_id, request.request)
        batch.entity_queue_add.append(row)
        self._enqueue_entity(row)

    def _entity_batch(self, entity_id: str, batch: Batch, now: datetime) -> None:
        """Run the queued requests of one entity as one batch; answers, state and dequeues go in ``batch``."""
        queue = self._entity_queue.get(entity_id) or []
        rows, rest = queue[:ENTITY_BATCH_SIZE], queue[ENTITY_BATCH_SIZE:]
        if rest:
            self._entity_queue[entity_id] = rest
            self._entities_ready.add(entity_id)
            if self._wakeup is not None:
                self._wakeup.set()
        else:
            self._entity_queue.pop(entity_id, None)
        if not rows:
            return
        name, key = parse_scheduler_id(entity_id)
        rec = self.store.entity(entity_id) or EntityRecord(entity_id, name, key, False, None, _iso(now))
        results, signals = self._run_entity(rec, rows)
        rec.last_op = _iso(now)
        batch.entities.append(rec)
        batch.entity_queue_delete.extend(r.id for r in rows)
        for row, (is_error, result) in zip(rows, results, strict=True):
            request = row.request
            if request.get("signal"):
                continue
            response: dict[str, Any] = {"result": result}
            if is_error:
                response["exceptionType"] = "Error"  # what TaskEntityShim sends for out-of-proc errors
            parent = self._live.get(str(request.get("parent")))
            if parent is not None:
                self._post(parent, h.new_event_raised_event(now, str(request["id"]), json.dumps(response)))
        for target, request in signals:
            self._queue_entity_request(EntityRequest(target, request), batch)

    def _run_entity(self, rec: EntityRecord, rows: list[EntityQueueRow]
                    ) -> tuple[list[tuple[bool, str | None]], list[tuple[str, dict[str, Any]]]]:
        """Call the SDK's entity handler once for ``rows``; updates ``rec``; returns results and signals."""
        entry = self.functions.entities.get(rec.name)
        if entry is None:
            message = json.dumps(f"The function '{rec.name}' doesn't exist, is disabled, or is not an entity function.")
            return [(True, message)] * len(rows), []
        payload = json.dumps({
            "self": {"name": rec.name, "key": rec.key},
            "exists": rec.exists,
            "state": rec.state,
            "batch": [{"name": r.request.get("op"), "input": r.request.get("input"),
                       "isSignal": bool(r.request.get("signal"))} for r in rows],
        })
        try:
            out = json.loads(entry.user_function(payload))
            results = [(bool(r.get("isError")), r.get("result")) for r in out["results"]]
            if len(results) != len(rows):
                raise ValueError(f"{len(results)} results for a batch of {len(rows)}")
        except Exception as exc:  # the handler itself failed: every operation of the batch failed
            log.warning("entity %s batch failed: %s", rec.id, exc)
            return [(True, json.dumps(f"{type(exc).__name__}: {exc}"))] * len(rows), []
        rec.exists = bool(out.get("entityExists"))
        rec.state = out.get("entityState") if rec.exists else None
        signals = []
        for signal in out.get("signals") or []:
            target = signal.get("target") or {}
            request = entity_request(str(signal.get("name")), signal.get("input"), signal=True, parent=rec.id,
                                     now=h.utc_now())
            signals.append((scheduler_id(str(target.get("name")), str(target.get("key"))), request))
        return results, signals

    # -- internals: activities -------------------------------------------------------------------
    def _start_pending_activities(self) -> None:
        to_start, self._to_start = self._to_start, []
        for work in to_start:
            self._start_activity(work)

    def _start_activity(self, work: WorkRow) -> None:
        assert self._loop is not None
        entry = self.functions.activities.get(work.name)
        if entry is None:
            self._deliver(work, h.new_task_failed_event(
                h.utc_now(), work.seq, f"The function '{work.name}' doesn't exist or is not an activity"))
            return
        fn = entry.user_function
        if inspect.iscoroutinefunction(fn):
            fut: asyncio.Future[Any] = asyncio.ensure_future(self._run_async(fn, entry, work))
        else:
            fut = self._loop.run_in_executor(self._pool, self._run_sync, fn, entry, work)
        self._running_activities.add(fut)
        fut.add_done_callback(lambda f: self._activity_done(work, f))

    def _kwargs(self, entry: Any, work: WorkRow) -> dict[str, Any]:
        return call_kwargs(entry, decode_activity_input(work.input_json), self.client_binding())

    def _run_sync(self, fn: Callable[..., Any], entry: Any, work: WorkRow) -> str:
        return encode_activity_output(fn(**self._kwargs(entry, work)))

    async def _run_async(self, fn: Callable[..., Any], entry: Any, work: WorkRow) -> str:
        return encode_activity_output(await fn(**self._kwargs(entry, work)))

    def _activity_done(self, work: WorkRow, fut: asyncio.Future[Any]) -> None:
        self._running_activities.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        now = h.utc_now()
        if exc is None:
            event = h.new_task_completed_event(now, work.seq, fut.result())
        else:
            details = "".join(traceback.format_exception(exc)[-3:])
            event = h.new_task_failed_event(
                now, work.seq, f"Activity function '{work.name}' failed: {type(exc).__name__}: {exc}", details)
        self._deliver(work, event)

    def _deliver(self, work: WorkRow, event: Event) -> None:
        self._arrivals.append((work, event))
        if self._wakeup is not None:
            self._wakeup.set()
