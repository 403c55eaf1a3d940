"""The Functions app indexes every function and imports fast."""

import subprocess
import sys
import time


def test_function_app_registers_all_functions() -> None:
    """Orchestrators, starters, status routes and activities are all registered."""
    import function_app
    from activities.apps import LifecycleActivity
    from activities.catalog import Activity
    from devhost.functions import FunctionIndex

    # get_functions() may run once per app object (a second call fails its duplicate-name check): devhost's index
    # is that one call, shared with the tests that start a devhost on function_app
    index = FunctionIndex.from_app(function_app.app)
    names = {*index.orchestrators, *index.activities, *(e.name for e in [*index.http, *index.blob, *index.timer])}
    assert {"rollout", "reconcile", "provision", "restart", "delete", "on_adapter_uploaded"} <= names
    assert {a.value for a in Activity} | {a.value for a in LifecycleActivity} <= names
    assert {"get_app", "list_apps", "delete_app_route", "start_rollback"} <= names


def test_import_takes_under_a_second() -> None:
    """Importing function_app in a fresh interpreter takes under 1 s (no heavy imports at module level)."""
    code = "import time; t=time.perf_counter(); import function_app; print(time.perf_counter()-t)"
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 1.0, out.stdout
    assert time.perf_counter() - started < 10
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, function_app; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "torch" not in modules and "azure.mgmt.appcontainers" not in modules
