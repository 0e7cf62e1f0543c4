"""The web UI: one static page at ``/`` and its assets under ``/static``, open without an API key.

The page is plain HTML, CSS and JavaScript modules (no build step, nothing fetched from the
internet); it calls the same public HTTP API as any other client, with the key the user enters.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class RevalidatedStaticFiles(StaticFiles):
    """Static files a browser revalidates (ETag) before reuse, so an upgraded page never mixes old modules."""

    def file_response(self, *args, **kwargs) -> Response:  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


# Not part of the API's OpenAPI schema: the UI is a client of that API, not a part of it.
router = APIRouter(tags=["ui"], include_in_schema=False)
router.mount("/static", RevalidatedStaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", response_class=FileResponse)
def index() -> FileResponse:
    # no-cache: a browser revalidates the page (cheap, ETag) so an upgrade shows up at once.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
