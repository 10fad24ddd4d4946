"""ASGI guard of the upload route: body cap, multipart only, file fields must be files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from msjoe.serving.limits import RequestError

__all__ = ["UploadGuard"]


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class UploadGuard:
    """ASGI middleware for upload routes: body cap, multipart only, file fields must be files.

    Why it exists: BentoML reads the whole form before the API runs, and for a file-typed
    field sent as *text* it downloads that text as a URL. For ``paths`` this guard

    * answers 413 as soon as ``Content-Length`` (or the bytes received so far) exceed
      ``max_body_bytes`` (an int or a zero-argument callable, read per request);
    * answers 415 unless the body is ``multipart/form-data``;
    * answers 400 when a field in ``file_fields`` is not a file part (no ``filename``), so the
      server never fetches a client-chosen URL;

    and otherwise replays the body, spooled to a temporary file (in memory up to 1 MiB), to
    the application. Other paths pass through untouched.
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        max_body_bytes: int | Callable[[], int],
        paths: Iterable[str] = ("/answer",),
        file_fields: Iterable[str] = ("video",),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.paths = {p.rstrip("/") or "/" for p in paths}
        self.file_fields = {f.encode() for f in file_fields}

    def _limit(self) -> int:
        value = self.max_body_bytes() if callable(self.max_body_bytes) else self.max_body_bytes
        return int(value)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = (scope.get("path") or "").rstrip("/") or "/"
        if scope.get("type") != "http" or scope.get("method") != "POST" or path not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        limit = self._limit()
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _reject(send, RequestError(400, "bad_content_length", "invalid Content-Length header"))
                return
            if declared > limit:
                await _reject(send, _too_large(limit))
                return
        content_type = headers.get(b"content-type", b"")
        from python_multipart.multipart import parse_options_header

        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            await _reject(send, RequestError(
                415, "multipart_required",
                "send the request as multipart/form-data with the video as a file field"))
            return

        spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        try:
            error = await self._read(receive, spool, params[b"boundary"], limit)
            if error is not None:
                await _reject(send, error)
                return
            await self.app(scope, _replay(spool, receive), send)
        finally:
            spool.close()

    async def _read(self, receive: Receive, spool: Any, boundary: bytes, limit: int) -> RequestError | None:
        from python_multipart.exceptions import MultipartParseError
        from python_multipart.multipart import MultipartParser, parse_options_header

        state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "error": None}

        def on_part_begin() -> None:
            state["headers"] = {}

        def on_header_field(data: bytes, start: int, end: int) -> None:
            state["field"] += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            state["value"] += data[start:end]

        def on_header_end() -> None:
            state["headers"][state["field"].lower()] = state["value"]
            state["field"] = state["value"] = b""

        def on_headers_finished() -> None:
            _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
            name = disposition.get(b"name", b"")
            if name in self.file_fields and b"filename" not in disposition and state["error"] is None:
                state["error"] = RequestError(
                    400, "video_not_a_file",
                    f"field {name.decode(errors='replace')!r} must be an uploaded file; the server does not "
                    "fetch URLs or read paths given as text")

        parser = MultipartParser(boundary, callbacks={
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        })
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return RequestError(400, "client_disconnected", "the client disconnected during the upload")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                return _too_large(limit)
            if chunk:
                spool.write(chunk)
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    return RequestError(400, "malformed_multipart", f"malformed multipart body: {exc}")
                if state["error"] is not None:
                    return state["error"]
            if not message.get("more_body", False):
                return None


def _too_large(limit: int) -> RequestError:
    return RequestError(413, "request_too_large", f"the request body exceeds {limit} bytes")


async def _reject(send: Send, error: RequestError) -> None:
    body = json.dumps(error.to_dict()).encode()
    await send({
        "type": "http.response.start",
        "status": error.status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


def _replay(spool: Any, receive: Receive, chunk_size: int = 1 << 16) -> Receive:
    """A ``receive`` that yields the spooled body, then defers to the real one (disconnects)."""
    spool.seek(0, os.SEEK_END)
    total = spool.tell()
    spool.seek(0)
    done = False

    async def replay() -> dict[str, Any]:
        nonlocal done
        if done:
            return await receive()
        chunk = spool.read(chunk_size)
        more = spool.tell() < total
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay
