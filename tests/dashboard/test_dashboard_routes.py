"""The dashboard's routes: the page and its files are served as they are, anonymous and without any key; every
other HTTP route of the Functions app stays at function level, so in Azure a request without the key is refused."""

from __future__ import annotations

import re

import azure.functions as func
import pytest

from orchestrations.dashboard import PAGE, STATIC_DIR, STATIC_FILES, dashboard_page, dashboard_static

CONTENT_TYPES = {PAGE: "text/html", **STATIC_FILES}

DASHBOARD_ROUTES = {"dashboard", "dashboard/static/{name}"}
#: Values a careless page might leak: settings holding keys or connection strings.
SECRETS = {"INFERENCE_API_KEY": "chat-secret-0123456789", "AzureWebJobsStorage":
           "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=c3RvcmFnZS1zZWNyZXQ=",
           "FUNCTION_KEY": "function-secret-abcdef", "AZURE_FUNCTIONS_KEY": "host-secret-abcdef"}


def _get(route_params: dict[str, str] | None = None, url: str = "http://host/api/dashboard") -> func.HttpRequest:
    return func.HttpRequest(method="GET", url=url, body=b"", route_params=route_params or {})


def _served() -> dict[str, func.HttpResponse]:
    """Every file the dashboard serves, by name."""
    files = {name: dashboard_static(_get({"name": name})) for name in STATIC_FILES}
    return {PAGE: dashboard_page(_get()), **files}


def test_page_and_files_are_served_with_their_types_and_a_strict_policy() -> None:
    for name, response in _served().items():
        assert response.status_code == 200, name
        assert response.mimetype == CONTENT_TYPES[name]
        assert response.get_body() == (STATIC_DIR / name).read_bytes()
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert response.headers["Referrer-Policy"] == "no-referrer"
    page = _served()[PAGE].get_body().decode()
    assert 'src="dashboard/static/dashboard.js"' in page and 'href="dashboard/static/dashboard.css"' in page
    assert "<script>" not in page and "style=" not in page  # nothing inline: the policy would block it


@pytest.mark.parametrize("name", ["", "index.html", "../dashboard.py", "..%2Fdashboard.py", "x.js", "DASHBOARD.JS"])
def test_only_the_listed_files_are_reachable(name: str) -> None:
    assert dashboard_static(_get({"name": name})).status_code == 404


def test_no_key_in_the_page_or_its_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the host's settings hold, none of it reaches the browser; the key goes only in a header."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    bodies = {name: r.get_body().decode() for name, r in _served().items()}
    for name, body in bodies.items():
        for value in SECRETS.values():
            assert value not in body, name
        assert not re.search(r"[?&]code=", body), name  # never a key in a URL
    script = bodies["dashboard.js"]
    assert 'headers["x-functions-key"] = key' in script
    assert "sessionStorage" in script and "localStorage" not in script  # for this tab only
    assert 'type="password"' in bodies[PAGE]


def test_api_routes_need_the_function_key_and_only_the_page_is_anonymous() -> None:
    """In Azure the host refuses a request without a valid key to every function-level route."""
    import function_app
    from devhost.functions import FunctionIndex

    http = FunctionIndex.from_app(function_app.app).http
    levels = {e.trigger.route: e.trigger.auth_level for e in http}
    assert DASHBOARD_ROUTES <= set(levels)
    for route, level in levels.items():
        expected = func.AuthLevel.ANONYMOUS if route in DASHBOARD_ROUTES else func.AuthLevel.FUNCTION
        assert level == expected, route
    assert all([m.value for m in e.trigger.methods] == ["GET"] for e in http if e.trigger.route in DASHBOARD_ROUTES)



def test_the_decision_and_policy_routes_the_page_calls_need_the_function_key() -> None:
    """The page's promote / abort / approve / reject and its policy view go through these routes; devhost does not
    check keys, so the host's auth level is what refuses a request without one in Azure."""
    import function_app
    from devhost.functions import FunctionIndex

    http = {e.trigger.route: e.trigger for e in FunctionIndex.from_app(function_app.app).http}
    decisions, policy = http["deployments/{id}/{action}"], http["apps/{app}/policy"]
    assert [m.value for m in decisions.methods] == ["POST"]
    assert {m.value for m in policy.methods} == {"GET", "PUT", "DELETE"}
    assert decisions.auth_level == policy.auth_level == func.AuthLevel.FUNCTION
    script = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    assert "`deployments/${encodeURIComponent(id)}/${action}`" in script and "/policy`" in script
