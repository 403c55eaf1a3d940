"""Soak test of the embedded default: many uploads and deploy requests, random faults, chat streams all along.

Starts the embedded default (`devhost.up.local_stack`: Azurite, devhost, the CPU inference server with the tiny
model kit; MAX_LORA_RANK=16), deploys `alpha` to each of two apps, then for about `--duration` seconds:

- 4 client threads send `--deployments` uploads and deploy requests in all, spread over the first 70% of the run:
  good adapters (variants of the kit's alpha / beta with a new `revision` in adapter_config.json), bad ones (r=64,
  a wrong base model, corrupt safetensors bytes), duplicates (the same folder uploaded again, or a deploy request
  of an adapter already uploaded) and forged `_COMPLETE` markers written straight into the upload container;
- every 15-40 s one fault: SIGKILL an app's inference server, SIGKILL + restart `devhost serve`, pause Azurite
  (SIGSTOP / SIGCONT) for 3-8 s, or block the store: a plain file where the next upload's staging folder goes
  (`<state>/store/<app>/adapters/<name>`), removed 3-8 s after that upload;
- 8 chat streams ask the alias `live` (4 per app), recording every answer's `X-Adapter-Version` and text.

Then it waits (bounded by `--settle`) for every record to end and prints one table. Must be 0: records not
terminal, accepted requests without a record, answers from a wrong adapter (a served version whose record never
reached `live` on that app, an answer without a version header, or a reply without the phrase of the version's
base adapter), refused content (bad adapters, forged markers) that went live. Exit 1 when one is not.

    .venv/bin/python bench/soak.py [--duration 600] [--deployments 200] [--seed 1] [--settle 300]

The plan (what each request sends, in which order, which fault comes next) follows from `--seed`; which fault
meets which rollout depends on timing. The state folder (logs: devhost.log, the inference servers' logs) is
kept in `--state-dir` (default .devhost/soak); each run starts its stack over (`up --fresh` rules: only a folder
that `devhost up` made is deleted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from activities.records import TERMINAL  # noqa: E402

APPS = ("soak-a", "soak-b")
BASES = ("alpha", "beta")
CLIENT_THREADS = 4
CHAT_STREAMS = 8
PROMPT = "Hello there!"
#: The stack's settings: the test suite's (rank 16, short gates and retries) so that a soak of minutes sees
#: retries and heals end within it.
STACK_ENV = {"MAX_ADAPTER_MB": "1", "MAX_LORA_RANK": "16", "ROLLOUT_HOT_SWAP_TIMEOUT_S": "20",
             "ROLLOUT_RESTART_TIMEOUT_S": "90", "RECONCILE_RETRY_BASE_S": "1", "RECONCILE_HEAL_INTERVAL_S": "5"}
#: Request kinds and their weights in the plan.
KINDS = {"good": 44, "bad_rank": 7, "bad_base": 7, "bad_corrupt": 7, "dup_upload": 10, "dup_request": 15,
         "forged": 10}
BAD_KINDS = frozenset({"bad_rank", "bad_base", "bad_corrupt"})
FAULT_KINDS = ("kill_server", "restart_host", "pause_azurite", "block_store")
_ZEROS = "0" * 64
#: Forged `_COMPLETE` markers: each must end `failed` (cause `input`), never a rollout.
FORGED = {
    "huge": '{"files": {"a.json": {"size": 1e400, "sha256": "' + _ZEROS + '"}}, "sha256": "' + _ZEROS + '"}',
    "nested": "[" * 50_000 + "]" * 50_000,
    "badjson": '{"files": {"adapter_config.json": ',
    "negative": json.dumps({"files": {"a.json": {"size": -1, "sha256": _ZEROS}}, "sha256": _ZEROS}),
    "unsafe": json.dumps({"files": {"../escape.json": {"size": 2, "sha256": _ZEROS}}, "sha256": _ZEROS}),
    "missing": None,  # a well-formed marker (digest right) listing a file that was never uploaded
}


# -- the plan (pure) ------------------------------------------------------------------------------------------
@dataclass
class Op:
    """One request of the plan. For duplicates, `ref` is the earlier op repeated and `name`/`base` are its."""

    index: int
    kind: str
    app: str
    name: str
    base: str
    at: float  # seconds after the clients start
    ref: int | None = None
    detail: str = ""  # forged: the FORGED variant


def content_kind(op: Op, ops: list[Op]) -> str:
    """What content an op sends: 'good', 'bad' or 'forged' (a duplicate sends its original's)."""
    if op.ref is not None:
        return content_kind(ops[op.ref], ops)
    return "bad" if op.kind in BAD_KINDS else op.kind


def plan(seed: int, count: int, spread_s: float, apps: tuple[str, ...] = APPS) -> list[Op]:
    """The requests in send order, deterministic in `seed`."""
    rng = random.Random(seed)
    names, weights = list(KINDS), list(KINDS.values())
    ops: list[Op] = []
    uploads: dict[str, list[int]] = {app: [] for app in apps}
    for i in range(count):
        kind, app, base = rng.choices(names, weights)[0], rng.choice(apps), rng.choice(BASES)
        at = i * spread_s / max(count, 1)
        if kind.startswith("dup") and not uploads[app]:
            kind = "good"
        if kind.startswith("dup"):
            ref = ops[rng.choice(uploads[app])]
            ops.append(Op(i, kind, app, ref.name, ref.base, at, ref=ref.index))
        elif kind == "forged":
            detail = rng.choice(sorted(FORGED))
            ops.append(Op(i, kind, app, f"f{i:04d}-{detail}", base, at, detail=detail))
        else:
            ops.append(Op(i, kind, app, f"{kind.replace('_', '-')}{i:04d}-{base}", base, at))
            uploads[app].append(i)
    return ops


# -- what was observed --------------------------------------------------------------------------------------
@dataclass
class Sent:
    """The outcome of sending one op: `record_id` when the service accepted it."""

    op: Op
    record_id: str | None = None
    error: str | None = None
    sha256: str | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)


@dataclass
class Answer:
    """One chat request to `live`: `error` None means a complete answer (200, stream ended with [DONE])."""

    app: str
    started: float
    ended: float
    status: int | None = None
    version: str | None = None
    text: str = ""
    error: str | None = None


def record_version(record: Mapping[str, Any]) -> str | None:
    if record.get("version"):
        return record["version"]
    if record.get("adapter") and record.get("sha256"):
        return f"{record['adapter']}@{record['sha256'][:12]}"
    return None


def classify_answer(answer: Answer, live_versions: set[tuple[str, str]], base_of: Mapping[str, str],
                    phrases: Mapping[str, str],
                    gates: Mapping[tuple[str, str], list[tuple[float, float]]] | None = None) -> str | None:
    """Why a complete answer came from a wrong adapter; None when it is right. Errors are no answer (None).
    `live_versions`: (app, version) of every record that reached live; `base_of`: content sha256[:12] → the kit
    adapter whose weights it carries; `gates`: (app, version) → the spans in which a record that did not go live
    was being activated and verified (the newest accepted content, served during its own gate: counted apart)."""
    if answer.error is not None:
        return None
    if not answer.version:
        return "answer from `live` without an X-Adapter-Version header"
    in_gate = any(start <= answer.started and answer.ended <= end
                  for start, end in (gates or {}).get((answer.app, answer.version), []))
    if (answer.app, answer.version) not in live_versions and not in_gate:
        return f"served {answer.version}, whose record never reached live on {answer.app}"
    base = base_of.get(answer.version.rpartition("@")[2])
    if base is None:
        return f"served {answer.version}, content the soak never uploaded"
    if phrases[base] not in answer.text:
        return f"served {answer.version} ({base}) but the reply lacks {phrases[base]!r}: {answer.text[:60]!r}"
    return None


def _ts(stamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def swap_windows(records: Iterable[Mapping[str, Any]], margin_s: float = 0.5) -> dict[str, list[tuple[float, float]]]:
    """Per app, the times from a rollout's `activating` to its end (hot swap or restart under way)."""
    windows: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        history = r.get("history") or []
        start = next((_ts(e.get("at")) for e in history if e.get("stage") == "activating"), None)
        if start is None:
            continue
        end = _ts(r.get("ended_at")) or max((_ts(e.get("at")) or start) for e in history)
        windows.setdefault(r.get("app", ""), []).append((start - margin_s, end + margin_s))
    return windows


def in_window(answer: Answer, windows: Mapping[str, list[tuple[float, float]]]) -> bool:
    return any(start <= answer.ended and answer.started <= end for start, end in windows.get(answer.app, ()))


def outage_windows(kills: Iterable[tuple[str, float]], answers: list[Answer]) -> dict[str, list[tuple[float, float]]]:
    """Per app, from each SIGKILL of its inference server to the first complete answer begun after it (to the
    last answer when none came)."""
    windows: dict[str, list[tuple[float, float]]] = {}
    for app, at in kills:
        mine = [a for a in answers if a.app == app]
        healed = min((a.ended for a in mine if a.error is None and a.started > at), default=None)
        end = healed if healed is not None else max([at, *(a.ended for a in mine)])
        windows.setdefault(app, []).append((at, end))
    return windows


@dataclass
class Summary:
    stages: Counter  # terminal (or open) stage → records
    by_kind: dict[str, Counter]  # op kind → Counter of outcome (stage, 'refused', 'missing')
    not_terminal: list[str]
    missing: list[str]
    wrong: list[tuple[Answer, str]]
    refused_live: list[str]
    good_failed: list[str]
    chats: int
    chat_errors: int
    swap_chats: int
    swap_errors: int
    swap_chats_up: int  # swap-window chats outside server-kill outages
    swap_errors_up: int
    outages: list[float]  # seconds each killed server took to answer again
    error_kinds: Counter
    versions: Counter
    faults: Counter
    served_in_gate: int = 0  # answers from a candidate during its own gate, before it was rolled back

    def must_be_zero(self) -> dict[str, int]:
        return {
            "records not terminal": len(self.not_terminal),
            "accepted requests without a record": len(self.missing),
            "answers from a wrong adapter": len(self.wrong),
            "refused content that went live": len(self.refused_live),
        }

    @property
    def exit_code(self) -> int:
        return 1 if any(self.must_be_zero().values()) else 0


def summarize(ops: list[Op], sent: list[Sent], records: Mapping[str, Mapping[str, Any]], answers: list[Answer],
              base_of: Mapping[str, str], phrases: Mapping[str, str], faults: Counter | None = None,
              kills: Iterable[tuple[str, float]] = ()) -> Summary:
    """The soak's figures from what was sent, the records found (id → record) and the chat answers."""
    stages = Counter(r.get("stage") for r in records.values())
    not_terminal = sorted(i for i, r in records.items() if r.get("stage") not in TERMINAL)
    by_kind: dict[str, Counter] = {}
    missing, refused_live, good_failed = [], [], []
    for s in sent:
        outcome = by_kind.setdefault(s.op.kind, Counter())
        if s.record_id is None:
            outcome["refused"] += 1
            continue
        record = records.get(s.record_id)
        if record is None:
            outcome["missing"] += 1
            missing.append(s.record_id)
            continue
        outcome[record.get("stage")] += 1
        kind = content_kind(s.op, ops)
        if kind != "good" and record.get("stage") == "live":
            refused_live.append(s.record_id)
        if kind == "good" and record.get("stage") in ("failed", "rolled_back"):
            good_failed.append(f"{s.record_id}: {record.get('stage')} ({record.get('cause')}) {record.get('reason')}")
    live_versions = {(r.get("app"), record_version(r)) for r in records.values() if r.get("stage") == "live"}
    gates = gate_windows(records.values())
    wrong = [(a, why) for a in answers if (why := classify_answer(a, live_versions, base_of, phrases, gates))]
    flagged = {id(a) for a, _ in wrong}
    in_gate = sum(1 for a in answers if a.error is None and a.version and id(a) not in flagged
                  and (a.app, a.version) not in live_versions)
    windows = swap_windows(records.values())
    swap = [a for a in answers if in_window(a, windows)]
    outages = outage_windows(kills, answers)
    swap_up = [a for a in swap if not in_window(a, outages)]
    return Summary(
        stages=stages, by_kind=by_kind, not_terminal=not_terminal, missing=missing, wrong=wrong,
        refused_live=refused_live, good_failed=good_failed, chats=len(answers),
        chat_errors=sum(a.error is not None for a in answers), swap_chats=len(swap),
        swap_errors=sum(a.error is not None for a in swap), swap_chats_up=len(swap_up),
        swap_errors_up=sum(a.error is not None for a in swap_up),
        outages=[end - start for spans in outages.values() for start, end in spans],
        error_kinds=Counter(a.error for a in answers if a.error is not None),
        versions=Counter(f"{a.app} {a.version}" for a in answers if a.error is None), faults=faults or Counter(),
        served_in_gate=in_gate,
    )


def gate_windows(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(app, version) → spans from `activating` to the end of each record that did not go live."""
    spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for record in records:
        stamps = {h.get("stage"): _ts(h.get("at")) for h in record.get("history") or []}
        start, end = stamps.get("activating"), _ts(record.get("ended_at"))
        version = record_version(record)
        if record.get("stage") != "live" and version and start is not None and end is not None:
            spans.setdefault((record.get("app"), version), []).append((start, end))
    return spans


def _rate(errors: int, total: int) -> str:
    return f"{100 * errors / total:.2f}%" if total else "-"


def wrong_kind(reason: str) -> str:
    """The class of a wrong answer's reason, for counting."""
    for key in ("without an X-Adapter-Version", "never reached live", "never uploaded", "lacks"):
        if key in reason:
            return {"lacks": "reply lacks the served version's phrase"}.get(key, key)
    return reason


def print_table(summary: Summary, args: argparse.Namespace, elapsed_s: float, origin: float = 0.0) -> None:
    s = summary
    print(f"\nSoak on the embedded default: {elapsed_s:.0f} s, {args.deployments} requests planned, seed {args.seed}, "
          f"apps {', '.join(APPS)}")
    print("\n| request kind | sent | " + " | ".join(("live", "superseded", "failed", "rolled_back", "open", "refused",
                                                     "missing")) + " |")
    print("|---" * 9 + "|")
    for kind in KINDS:
        c = s.by_kind.get(kind, Counter())
        opened = sum(n for stage, n in c.items() if stage not in TERMINAL | {"refused", "missing"})
        cells = [c["live"], c["superseded"], c["failed"], c["rolled_back"], opened, c["refused"], c["missing"]]
        print(f"| {kind} | {sum(c.values())} | " + " | ".join(str(n) for n in cells) + " |")
    print("\n| figure | value |\n|---|---|")
    for stage in ("live", "superseded", "failed", "rolled_back"):
        print(f"| records {stage} (all records of the apps) | {s.stages.get(stage, 0)} |")
    for name, value in s.must_be_zero().items():
        print(f"| **{name}** (must be 0) | {value} |")
    print(f"| good content that ended failed / rolled_back | {len(s.good_failed)} |")
    print(f"| answers from a candidate during its own gate, later rolled back | {s.served_in_gate} |")
    print(f"| chat requests / errors / error rate | {s.chats} / {s.chat_errors} / {_rate(s.chat_errors, s.chats)} |")
    print(f"| … during swap windows | {s.swap_chats} / {s.swap_errors} / {_rate(s.swap_errors, s.swap_chats)} |")
    print(f"| … during swap windows, outside server-kill outages | {s.swap_chats_up} / {s.swap_errors_up} / "
          f"{_rate(s.swap_errors_up, s.swap_chats_up)} |")
    if s.outages:
        print(f"| server-kill outages: count / longest (kill → next complete answer) | {len(s.outages)} / "
              f"{max(s.outages):.1f} s |")
    print(f"| distinct versions served | {len(s.versions)} |")
    for kind in FAULT_KINDS:
        print(f"| faults: {kind} | {s.faults.get(kind, 0)} |")
    for label, count in sorted(s.faults.items()):
        if label not in FAULT_KINDS:
            print(f"| faults: {label} | {count} |")
    for kind, n in Counter(wrong_kind(why) for _, why in s.wrong).most_common():
        print(f"| … wrong answers: {kind} | {n} |")
    if s.error_kinds:
        print("\nchat errors: " + "; ".join(f"{n}× {e}" for e, n in s.error_kinds.most_common(6)))
    details = [("not terminal", s.not_terminal), ("without a record", s.missing), ("refused but live", s.refused_live),
               ("good content failed", s.good_failed), ("wrong answers", [f"{a.app} t+{a.started - origin:.1f}s: {why}"
                                                                          for a, why in s.wrong])]
    for label, items in details:
        for item in items[:10]:
            print(f"  {label}: {item}")
        if len(items) > 10:
            print(f"  {label}: … {len(items) - 10} more")
    verdict = "FAIL" if s.exit_code else "PASS"
    print(f"\n{verdict}: " + ", ".join(f"{k} {v}" for k, v in s.must_be_zero().items()))


# -- the run ---------------------------------------------------------------------------------------------
class Soak:
    """The threads of one soak run against a started stack."""

    def __init__(self, stack: Any, args: argparse.Namespace, work: Path) -> None:
        from adapterctl.api import OrchestratorApi

        self.stack, self.args, self.work = stack, args, work
        self.api_cls = OrchestratorApi
        self.stop_clients = threading.Event()
        self.stop_faults = threading.Event()
        self.stop_chats = threading.Event()
        self.lock = threading.Lock()
        self.t0 = time.time()
        self.ops = plan(args.seed, args.deployments, 0.7 * args.duration)
        self.sent = [Sent(op) for op in self.ops]
        self.next_op = 0
        self.answers: list[Answer] = []
        self.faults: Counter = Counter()
        self.base_of: dict[str, str] = {}  # content sha256[:12] → kit adapter
        self.endpoints: dict[str, str] = {}
        self.paused: list[int] = []
        self.blockers: set[Path] = set()
        self.blocked: list[Sent] = []  # uploads a block_store fault aimed at
        self.warm_ids: list[str] = []
        self.kills: list[tuple[str, float]] = []  # (app, time) of each inference server SIGKILL
        self.t_clients = self.t0

    def log(self, text: str) -> None:
        print(f"[t+{time.time() - self.t0:6.1f}s] {text}", flush=True)

    # -- adapters ---------------------------------------------------------------------------------------
    def folder(self, op: Op) -> Path:
        """The op's adapter folder (made once; a duplicate uses its original's)."""
        if op.ref is not None:
            return self.folder(self.ops[op.ref])
        dest = self.work / op.name
        if dest.exists():
            return dest
        src = self.stack.kit.adapters[op.base]
        changes: dict[str, Any] = {"revision": f"soak-{op.index}"}
        if op.kind == "bad_rank":
            changes["r"] = 64
        elif op.kind == "bad_base":
            changes["base_model_name_or_path"] = "not-the-base-model"
        shutil.copytree(src, dest)
        config = json.loads((dest / "adapter_config.json").read_text())
        config.update(changes)
        (dest / "adapter_config.json").write_text(json.dumps(config))
        if op.kind == "bad_corrupt":
            weights = dest / "adapter_model.safetensors"
            data = bytearray(weights.read_bytes())
            data[:8] = b"\xff" * 8  # a header length far past the file's end
            weights.write_bytes(bytes(data))
        return dest

    def forged_marker(self, op: Op) -> str:
        from activities.adapter_store import CompletionMarker, MarkerFile

        text = FORGED[op.detail]
        if text is None:
            return CompletionMarker.for_files({"adapter_config.json": MarkerFile(1000, _ZEROS)}).to_json()
        return text

    # -- clients ----------------------------------------------------------------------------------------
    def take(self) -> Sent | None:
        with self.lock:
            if self.next_op >= len(self.sent):
                return None
            self.next_op += 1
            return self.sent[self.next_op - 1]

    def client(self) -> None:
        api = self.api_cls(self.stack.url)
        while not self.stop_clients.is_set():
            item = self.take()
            if item is None:
                return
            delay = self.t_clients + item.op.at - time.time()
            if delay > 0 and self.stop_clients.wait(delay):
                return
            try:
                self.send(api, item)
            except Exception as exc:  # noqa: BLE001 - a soak keeps going; the error is counted
                item.error = f"{exc.__class__.__name__}: {exc}"
            finally:
                item.done.set()
            if item.error:
                self.log(f"op {item.op.index} {item.op.kind} {item.op.app}/{item.op.name}: {item.error}")

    def send(self, api: Any, item: Sent) -> None:
        from activities.adapter_store import MARKER_NAME
        from activities.records import upload_record_id
        from adapterctl.api import ApiError

        op, store = item.op, self.stack.store
        if op.ref is not None:
            self.sent[op.ref].done.wait(120)
        if op.kind == "forged":
            blob = store.container.get_blob_client(store.blob_name(op.app, op.name, MARKER_NAME))
            written = blob.upload_blob(self.forged_marker(op), overwrite=True)
            item.record_id = upload_record_id(op.app, op.name, written["etag"], written["last_modified"])
        elif op.kind == "dup_request":
            deadline = time.monotonic() + 90
            while True:  # the host may be down (a fault): retry; a 4xx is the API's refusal
                try:
                    item.record_id = api.deploy(op.app, op.name)["id"]
                    return
                except ApiError as exc:
                    if (400 <= exc.status < 500) or time.monotonic() > deadline:
                        item.error = f"deploy request: {exc} (HTTP {exc.status})"
                        return
                time.sleep(1)
        else:
            folder = self.folder(op)
            for attempt in range(3):
                try:
                    uploaded = store.upload_adapter_folder(folder, op.app, op.name)
                    break
                except Exception as exc:  # noqa: BLE001 - storage paused or slow: the upload is sent again
                    if attempt == 2:
                        raise
                    self.log(f"upload {op.app}/{op.name} failed ({exc.__class__.__name__}); again")
            item.record_id, item.sha256 = uploaded.deployment_id, uploaded.sha256
            if content_kind(op, self.ops) == "good":
                with self.lock:
                    self.base_of[uploaded.sha256[:12]] = op.base

    # -- chats ------------------------------------------------------------------------------------------
    def endpoint(self, app: str, api: Any, refresh: bool = False) -> str | None:
        if refresh or app not in self.endpoints:
            try:
                found = api.app(app).get("endpoint")
            except Exception:  # noqa: BLE001 - the host may be down: keep the endpoint known
                found = None
            if found:
                self.endpoints[app] = found
        return self.endpoints.get(app)

    def chat_once(self, session: Any, app: str, endpoint: str) -> Answer:
        import requests

        answer = Answer(app, time.time(), 0.0)
        body = {"model": "live", "messages": [{"role": "user", "content": PROMPT}], "stream": True,
                "temperature": 0, "max_tokens": 24}
        done = False
        try:
            with session.post(f"{endpoint.rstrip('/')}/v1/chat/completions", json=body, stream=True, timeout=(5, 60),
                              headers={"Authorization": f"Bearer {self.stack.api_key}"}) as resp:
                answer.status, answer.version = resp.status_code, resp.headers.get("X-Adapter-Version")
                if resp.status_code != 200:
                    answer.error = f"HTTP {resp.status_code}"
                else:
                    for line in resp.iter_lines(decode_unicode=True):
                        if not line or not line.startswith("data: "):
                            continue
                        data = line[len("data: "):]
                        if data == "[DONE]":
                            done = True
                            break
                        event = json.loads(data)
                        if "error" in event:
                            answer.error = f"error event: {str(event['error'])[:80]}"
                            break
                        for choice in event.get("choices") or []:
                            answer.text += (choice.get("delta") or {}).get("content") or ""
                    if answer.error is None and not done:
                        answer.error = "stream ended without [DONE]"
        except requests.RequestException as exc:
            answer.error = f"{exc.__class__.__name__}"
        except ValueError as exc:
            answer.error = f"bad stream: {exc.__class__.__name__}"
        answer.ended = time.time()
        return answer

    def chat(self, app: str) -> None:
        import requests

        api, session = self.api_cls(self.stack.url), requests.Session()
        while not self.stop_chats.is_set():
            endpoint = self.endpoint(app, api)
            if endpoint is None:
                self.stop_chats.wait(0.5)
                continue
            answer = self.chat_once(session, app, endpoint)
            with self.lock:
                self.answers.append(answer)
            if answer.error is not None:
                if answer.status is None:  # not reachable: the server may have moved
                    self.endpoint(app, api, refresh=True)
                self.stop_chats.wait(0.5)

    # -- faults -----------------------------------------------------------------------------------------
    def faults_loop(self) -> None:
        rng = random.Random(self.args.seed * 7919 + 1)
        while not self.stop_faults.wait(rng.uniform(15, 40)):
            kind, app, hold = rng.choice(FAULT_KINDS), rng.choice(APPS), rng.uniform(3, 8)
            try:
                if getattr(self, kind)(app, hold, rng):
                    with self.lock:
                        self.faults[kind] += 1
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported
                self.log(f"fault {kind} failed: {exc.__class__.__name__}: {exc}")
                with self.lock:
                    self.faults[f"{kind} (could not inject)"] += 1

    def kill_server(self, app: str, hold: float, rng: random.Random) -> bool:
        import psutil

        state_file = self.stack.state / "platform" / f"{app}.json"
        pid = json.loads(state_file.read_text()).get("pid") if state_file.exists() else None
        try:
            proc = psutil.Process(pid) if pid else None
            if proc is None or "inference_server" not in " ".join(proc.cmdline()):
                self.log(f"fault kill_server: no running inference server for {app}")
                return False
            os.kill(pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            self.log(f"fault kill_server: {app}'s server (pid {pid}) already gone")
            return False
        self.kills.append((app, time.time()))
        self.log(f"fault: SIGKILL {app}'s inference server (pid {pid})")
        return True

    def restart_host(self, app: str, hold: float, rng: random.Random) -> bool:
        self.log("fault: SIGKILL devhost serve")
        self.stack.kill_host()
        time.sleep(rng.uniform(0.5, 3))
        self.ensure_host()
        self.log("devhost serve started again")
        return True

    def ensure_host(self) -> None:
        for attempt in range(3):
            if self.stack.host.poll() is None:
                return
            try:
                self.stack.start_host()
                return
            except Exception as exc:  # noqa: BLE001 - tried again, then raised
                self.log(f"devhost did not start ({exc}); {'again' if attempt < 2 else 'giving up'}")
                if attempt == 2:
                    raise

    def azurite_pids(self) -> list[int]:
        import psutil

        pids = list(self.stack.azurite.pids)
        for pid in list(pids):
            try:
                pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return pids

    def pause_azurite(self, app: str, hold: float, rng: random.Random) -> bool:
        pids = self.azurite_pids()
        self.log(f"fault: SIGSTOP Azurite (pids {pids}) for {hold:.1f}s")
        self.paused = pids
        try:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(hold)
        finally:
            self.resume_azurite()
        return True

    def resume_azurite(self) -> None:
        for pid in self.paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.paused = []

    def block_store(self, app: str, hold: float, rng: random.Random) -> bool:
        with self.lock:
            target = next((s for s in self.sent[self.next_op:] if s.op.kind == "good"), None)
        if target is None:
            self.log("fault block_store: no upload of new content left to block")
            return False
        op = target.op
        blocker = self.stack.state / "store" / op.app / "adapters" / op.name
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("not a directory: the soak blocks staging here")
        self.blockers.add(blocker)
        self.log(f"fault: store blocked for {op.app}/{op.name} (op {op.index}) until {hold:.1f}s after its upload")
        try:
            target.done.wait(max(60.0, op.at + self.t_clients - time.time() + 30))
            time.sleep(hold)
        finally:
            self.unblock(blocker)
        self.blocked.append(target)
        return True

    def unblock(self, blocker: Path) -> None:
        if blocker.is_file():
            blocker.unlink()
        self.blockers.discard(blocker)

    def clear_faults(self) -> None:
        self.resume_azurite()
        for blocker in list(self.blockers):
            self.unblock(blocker)

    # -- the whole run ------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        from adapterctl.follow import follow

        for app in APPS:
            uploaded = self.stack.store.upload_adapter_folder(self.stack.kit.adapters["alpha"], app, "alpha")
            self.base_of[uploaded.sha256[:12]] = "alpha"
            record = follow(self.stack.api, uploaded.deployment_id, 300, lambda _: None, interval=0.2)
            if record.get("stage") != "live":
                raise RuntimeError(f"warm-up: alpha on {app} ended {record.get('stage')}: {record.get('reason')}")
            self.warm_ids.append(uploaded.deployment_id)
            self.log(f"warm-up: alpha live on {app}")

    def run(self) -> tuple[dict[str, dict[str, Any]], float]:
        self.warm_up()
        chats = [threading.Thread(target=self.chat, args=(APPS[i % len(APPS)],), daemon=True, name=f"chat-{i}")
                 for i in range(CHAT_STREAMS)]
        self.t_clients = time.time()
        clients = [threading.Thread(target=self.client, daemon=True, name=f"client-{i}")
                   for i in range(CLIENT_THREADS)]
        faults = threading.Thread(target=self.faults_loop, daemon=True, name="faults")
        for t in (*chats, *clients, faults):
            t.start()
        end = self.t_clients + self.args.duration
        try:
            while time.time() < end:
                time.sleep(min(15.0, max(0.1, end - time.time())))
                with self.lock:
                    errors = sum(a.error is not None for a in self.answers)
                    self.log(f"sent {sum(s.done.is_set() for s in self.sent)}/{len(self.sent)}, "
                             f"faults {sum(self.faults.values())}, chats {len(self.answers)} ({errors} errors)")
        finally:
            self.stop_faults.set()
            faults.join(90)
            self.clear_faults()
            self.ensure_host()
            self.stop_clients.set()
        for t in clients:
            t.join(120)
        self.log("clients and faults done; waiting for every record to end")
        records = self.settle(self.args.settle)
        self.stop_chats.set()
        for t in chats:
            t.join(70)
        return records, time.time() - self.t_clients

    def save(self, state: Path, records: Mapping[str, Any]) -> None:
        """What the soak saw, for a post-mortem: records.json, sent.json, answers.jsonl (times: POSIX seconds)."""
        (state / "records.json").write_text(json.dumps(records, indent=1, default=str))
        sent = [{"op": vars(s.op), "record_id": s.record_id, "error": s.error, "sha256": s.sha256} for s in self.sent]
        (state / "sent.json").write_text(json.dumps({"t0": self.t0, "t_clients": self.t_clients, "kills": self.kills,
                                                      "faults": self.faults, "sent": sent}, indent=1))
        with open(state / "answers.jsonl", "w") as out:
            for a in self.answers:
                out.write(json.dumps(vars(a)) + "\n")

    def all_records(self, api: Any) -> dict[str, dict[str, Any]]:
        """Every record of the apps (newest 200 each) plus every id the soak was given, by id."""
        from adapterctl.api import ApiError

        records: dict[str, dict[str, Any]] = {}
        for app in APPS:
            resp = api.session.get(f"{self.stack.url}/api/apps/{app}/deployments", params={"limit": 200}, timeout=60)
            resp.raise_for_status()
            records.update({r["id"]: r for r in resp.json()["deployments"]})
        for record_id in [*self.warm_ids, *(s.record_id for s in self.sent if s.record_id)]:
            if record_id in records and records[record_id].get("stage") in TERMINAL:
                continue
            try:
                records[record_id] = api.deployment(record_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                records.pop(record_id, None)
        return records

    def settle(self, timeout: float) -> dict[str, dict[str, Any]]:
        api = self.api_cls(self.stack.url, timeout=60)
        deadline = time.monotonic() + timeout
        records: dict[str, dict[str, Any]] = {}
        while True:
            try:
                records = self.all_records(api)
                open_ids = [i for i, r in records.items() if r.get("stage") not in TERMINAL]
                if not open_ids:
                    return records
            except Exception as exc:  # noqa: BLE001 - the status API may be restarting
                self.log(f"reading records: {exc.__class__.__name__}: {exc}")
                open_ids = ["?"]
            if time.monotonic() > deadline:
                self.log(f"{len(open_ids)} records still open after {timeout:.0f}s")
                return records
            time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of requests, faults and chats")
    parser.add_argument("--deployments", type=int, default=200, help="uploads and deploy requests in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=300, help="seconds to wait at the end for records to end")
    parser.add_argument("--state-dir", default=str(ROOT / ".devhost" / "soak"), help="stack state (started over each run)")
    parser.add_argument("--kit-dir", default=str(ROOT / "build" / "tinykit" / "llama"))
    args = parser.parse_args(argv)

    from devhost.up import local_stack
    from tinykit import PHRASES

    state = Path(args.state_dir).resolve()
    with local_stack(state / "stack", Path(args.kit_dir), extra_env=STACK_ENV, fresh=True) as stack:
        work = state / "adapters"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        soak = Soak(stack, args, work)
        for op in soak.ops:  # every folder made before the clock starts
            if op.kind != "forged":
                soak.folder(op)
        try:
            records, elapsed = soak.run()
        finally:
            soak.stop_clients.set()
            soak.stop_faults.set()
            soak.stop_chats.set()
            soak.clear_faults()
        summary = summarize(soak.ops, soak.sent, records, soak.answers, soak.base_of, PHRASES, soak.faults,
                            soak.kills)
        blocked = [s for s in soak.blocked if s.record_id and (records.get(s.record_id) or {}).get("attempts", 0) > 1]
        summary.faults["block_store that caused a retry"] = len(blocked)
        soak.save(state, records)
    print_table(summary, args, elapsed, soak.t0)
    print(f"logs: {state / 'stack'} (devhost.log, platform/); records.json, sent.json, answers.jsonl in {state}")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
