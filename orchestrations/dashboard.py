"""The dashboard: one static page (`GET /api/dashboard`) and its script and style (`GET /api/dashboard/static/{name}`).

The page is plain HTML, JavaScript and CSS from `orchestrations/dashboard_static/`, served as they are: no template,
no build step, nothing of the host's settings in them, so the page never carries a key. In the browser it reads
the status API (`GET /api/apps`, `/api/apps/{app}`, `/api/apps/{app}/deployments?limit=`, `/api/deployments/{id}`,
`/api/apps/{app}/policy`) every few seconds and acts through the same routes as `adapterctl` (`POST
/api/apps/{app}/rollback`, `DELETE /api/apps/{app}`, and `POST /api/deployments/{id}/{action}` for promote, abort,
approve and reject), each after a confirmation. Its *Deploy* form sends a picked adapter folder to
`POST /api/apps/{app}/uploads` (orchestrations/uploads.py: validated with the orchestrator's rules, then uploaded
like `adapterctl deploy` uploads), after checking in the browser what it can against `GET /api/uploads/rules`.

Authentication: these two routes are anonymous (a browser cannot send a header when it navigates to a page, and a
key in the URL would end up in history and logs); every API route stays at function level. In Azure the user types
a host key (it opens every function; a function's own key opens only that one) once into the page's key field: the
page keeps it in `sessionStorage` (this tab only, gone when the tab closes) and sends it as the `x-functions-key`
header on each request, which the Functions host checks like `?code=`. A 401 from the API asks for the key again.
On devhost no key is needed (it does not check function keys). docs/dashboard.md says the same for users.
"""

from __future__ import annotations

from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()

STATIC_DIR = Path(__file__).resolve().parent / "dashboard_static"
PAGE = "index.html"
#: The page's script and style sheet and how each is served; nothing else in the folder is reachable.
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: Same-origin only: no inline script or style, no frames, no requests to other hosts.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str, mimetype: str) -> func.HttpResponse:
    """One of the page's files as it is, with the security headers."""
    return func.HttpResponse((STATIC_DIR / name).read_bytes(), status_code=200, mimetype=mimetype, charset="utf-8",
                             headers=dict(SECURITY_HEADERS))


@bp.route(route="dashboard", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def dashboard_page(req: func.HttpRequest) -> func.HttpResponse:
    """The dashboard page (anonymous: it holds no data and no key; the API calls it makes carry the key)."""
    return _file(PAGE, "text/html")


@bp.route(route="dashboard/static/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def dashboard_static(req: func.HttpRequest) -> func.HttpResponse:
    """The page's script or style sheet by name; 404 for any other name."""
    name = req.route_params.get("name", "")
    mimetype = STATIC_FILES.get(name)
    if mimetype is None:
        return func.HttpResponse("not found", status_code=404, mimetype="text/plain")
    return _file(name, mimetype)
