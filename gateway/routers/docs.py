"""``/docs`` (Swagger UI) and ``/redoc`` from assets the gateway serves itself, so they work offline.

The assets come from the pinned ``fastapi-offline`` package (Swagger UI and ReDoc bundles); the
pages hold no inline script, so the Content-Security-Policy (``script-src 'self'``) stands.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

# Swagger UI and ReDoc set styles inline (ReDoc also starts a worker from a blob): scripts stay
# same-origin only, styles may be inline on these two pages.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": DOCS_CSP}

router = APIRouter(include_in_schema=False)
router.mount("/static/vendor", StaticFiles(directory=ASSETS_DIR), name="vendor")

_SWAGGER = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>NER service - API docs</title>
  <link rel="icon" href="static/vendor/favicon.png">
  <link rel="stylesheet" href="static/vendor/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="static/vendor/swagger-ui-bundle.js"></script>
  <script src="static/docs/swagger-init.js"></script>
</body>
</html>
"""

_REDOC = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>NER service - API reference</title>
  <link rel="icon" href="static/vendor/favicon.png">
</head>
<body>
  <redoc spec-url="openapi.json"></redoc>
  <script src="static/vendor/redoc.standalone.js"></script>
</body>
</html>
"""


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    return HTMLResponse(_SWAGGER, headers=_HEADERS)


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    return HTMLResponse(_REDOC, headers=_HEADERS)
