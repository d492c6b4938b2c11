"""``hashindex serve-http``: the search service over HTTP (Starlette app, served by uvicorn).

Endpoints (JSON in and out; errors are ``{"error": reason}`` with a 4xx status):

- ``GET /``: the query page (one HTML file, no external assets);
- ``GET /health``, ``GET /stats``;
- ``POST /search``: multipart ``image`` file(s) with form fields ``k``, ``rerank``, ``candidates``,
  ``labels`` (comma-separated class names), or a JSON body ``{"codes": [...], "k": 8, "labels": [...]}``
  (hex strings of packed codes, or 0/1 lists; ``"features"`` too for ``"rerank": true``);
- ``POST /add``: multipart ``image`` file(s) and an optional ``label``; an image the index already
  holds (the same bytes) is skipped and listed under ``skipped``;
- ``POST /remove``: JSON ``{"ids": [...]}`` and / or ``{"label": NAME}``;
- ``GET /image/{id}``: the stored image of an id (what the page shows as a thumbnail).

Starlette (with uvicorn) because it is small, maintained, typed, async with a thread pool for
the blocking encode and search, and its in-process ``TestClient`` lets tests call the real app.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

PAGE = Path(__file__).with_name("page.html")


def create_app(service) -> "Starlette":
    """The Starlette application over a loaded :class:`~hashapp.service.SearchService`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    from .service import BadRequest

    page = PAGE.read_text(encoding="utf-8")

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    async def read_body(request: Request) -> None:
        """Read the body, refusing it (413) beyond the upload limit before it is all in memory."""
        limit = service.limits.max_upload_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            raise _TooLarge(limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _TooLarge(limit)
        request._body = bytes(body)  # Starlette's cache: form() and json() parse it from here

    async def uploads(form) -> list[tuple[str, bytes]]:
        files = [f for f in form.getlist("image") if hasattr(f, "read")]
        return [(f.filename or "upload", await f.read()) for f in files]

    async def parse(request: Request) -> tuple[str, object]:
        await read_body(request)
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                return "json", await request.json()
            except ValueError as exc:
                raise BadRequest(f"malformed JSON ({exc})") from exc
        if kind.startswith("multipart/form-data"):
            return "form", await request.form(max_files=service.limits.max_images + 1)
        raise BadRequest("send multipart/form-data (field 'image') or application/json")

    def handle(endpoint):
        async def wrapped(request: Request):
            try:
                return await endpoint(request)
            except _TooLarge as exc:
                return error(413, f"request body over the {exc.limit}-byte limit")
            except BadRequest as exc:
                return error(400, str(exc))
        return wrapped

    async def home(request: Request):
        return HTMLResponse(page)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "ntotal": len(service.index)})

    async def stats(request: Request):
        return JSONResponse(await run_in_threadpool(service.stats))

    async def search(request: Request):
        kind, payload = await parse(request)
        if kind == "json":
            if not isinstance(payload, dict):
                raise BadRequest("the JSON body must be an object")
            rerank = bool(payload.get("rerank", False))
            k, candidates = service.check_search(payload.get("k", 8), rerank, payload.get("candidates", 1000))
            codes = service.parse_codes(payload.get("codes"))
            features = None
            if rerank:
                features = _features(payload.get("features"), len(codes))
            labels = payload.get("labels") or None
            call = partial(service.search, [f"code {i}" for i in range(len(codes))], codes, features)
        else:
            rerank = payload.get("rerank", "false").lower() in ("1", "true", "on", "yes")
            k, candidates = service.check_search(payload.get("k", "8"), rerank, payload.get("candidates", "1000"))
            labels = [s.strip() for s in payload.get("labels", "").split(",") if s.strip()] or None
            # Decode, encode and search in one worker-thread call (the upload is never decoded
            # on the event loop, and a request pays one thread hop).
            call = partial(service.search_uploads, await uploads(payload), rerank=rerank)
        results = await run_in_threadpool(call, k=k, candidates=candidates, labels=labels)
        return JSONResponse({"k": k, "results": results})

    async def add(request: Request):
        kind, payload = await parse(request)
        if kind != "form":
            raise BadRequest("send the images to add as multipart/form-data (field 'image')")
        label = (payload.get("label") or "").strip() or None
        report = await run_in_threadpool(service.add, await uploads(payload), label)
        return JSONResponse({"ids": report.ids.tolist(), "new_classes": report.new_classes,
                             "skipped": [{"image": name, "reason": reason} for name, reason in report.skipped],
                             "ntotal": len(service.index)})

    async def remove(request: Request):
        kind, payload = await parse(request)
        if kind != "json" or not isinstance(payload, dict):
            raise BadRequest('send a JSON object: {"ids": [...]} and / or {"label": NAME}')
        ids, label = payload.get("ids"), payload.get("label")
        if ids is not None and (not isinstance(ids, list) or not all(type(i) is int for i in ids)):
            raise BadRequest("'ids' must be a list of integers")
        try:
            removed = await run_in_threadpool(service.remove, ids, label)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        return JSONResponse({"removed": removed, "ntotal": len(service.index)})

    async def image(request: Request):
        try:
            image_id = int(request.path_params["image_id"])
        except ValueError:
            return error(400, "the image id must be an integer")
        path = await run_in_threadpool(service.image_path, image_id)
        if path is None or not path.is_file():
            return error(404, f"no stored image for id {image_id}")
        return FileResponse(path)

    return Starlette(routes=[
        Route("/", home), Route("/health", health), Route("/stats", stats),
        Route("/search", handle(search), methods=["POST"]), Route("/add", handle(add), methods=["POST"]),
        Route("/remove", handle(remove), methods=["POST"]), Route("/image/{image_id}", image),
    ])


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def _features(values, n: int):
    import numpy as np

    from .service import BadRequest

    try:
        features = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"features: {exc}") from exc
    if features.ndim != 2 or len(features) != n:
        raise BadRequest(f"'features' must be a list of {n} equal-length number lists for rerank")
    return features


@click.command("serve-http")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default: the service has no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Encoder file (default: the one recorded with the index).")
@click.option("--max-k", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--max-upload-mb", type=click.FloatRange(min=0.01), default=16.0, show_default=True)
def serve_http_command(index_dir, host, port, model_path, max_k, max_upload_mb):
    """Serve the index at INDEX_DIR over HTTP: a query page at /, JSON endpoints /search, /add,
    /remove, /health, /stats (see `hashapp.web`)."""
    import uvicorn

    from .service import Limits, SearchService

    service = SearchService(index_dir, model_path=model_path,
                            limits=Limits(max_k=max_k, max_upload_bytes=int(max_upload_mb * (1 << 20))))
    click.echo(f"serving {len(service.index)} codes ({service.index.spec}) on http://{host}:{port}/", err=True)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
