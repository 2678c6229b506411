"""Routes for archives: export streamed as a CAR, verify an upload."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from kernel.errors import UsagiError

from ...node import operations
from .calls import Call, Route, body_limit
from .problems import FieldError, ValidationFailedError
from .transfer import receive_file, scratch, send_file

CAR_TYPE: Final = "application/vnd.ipld.car"
#: The default of the config's ``local_upload_max`` (home.Config).
UPLOAD_MAX: Final = 1 << 30


def _query(call: Call, names: Sequence[str]) -> dict[str, str]:
    """The query's parameters, each at most once and each one of ``names``."""
    query = call.request.query
    errors: list[FieldError] = []
    for key in sorted(set(query)):
        if key not in names:
            errors.append({"field": key[:100], "code": "unknown_field",
                           "message": "not a parameter of this route"})
        elif len(query.getall(key)) > 1:
            errors.append({"field": key, "code": "invalid", "message": "given more than once"})
    if errors:
        raise ValidationFailedError(errors)
    return dict(query)


def _timestamp(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def export_archive(call: Call) -> web.StreamResponse:
    """The history (or one partner's, or a window) as a sealed CAR, streamed."""
    from ...archive.archive import export_archive as export

    query = _query(call, ("partner", "since", "until"))
    window: dict[str, float | None] = {}
    errors: list[FieldError] = []
    for key in ("since", "until"):
        window[key] = _timestamp(query[key]) if key in query else None
        if key in query and window[key] is None:
            errors.append({"field": key, "code": "invalid",
                           "message": "an ISO 8601 date or date-time (UTC when naive)"})
    if errors:
        raise ValidationFailedError(errors)
    did = (await operations.partner(call.node, query["partner"])).did \
        if "partner" in query else None
    with scratch(call.node.home.path, ".car") as path:
        report = await export(call.node, path, partner=did, since=window["since"],
                              until=window["until"])
        stamp = call.node.now().strftime("%Y%m%d")
        return await send_file(call.request, path, content_type=CAR_TYPE,
                               filename=f"usagi-{stamp}.car",
                               headers={"Usagi-Archive-Root": str(report.root),
                                        "Usagi-Archive-Documents": str(report.documents)})


async def verify_archive(call: Call) -> web.Response:
    """Verify an uploaded CAR with this node's keys; the report, sound or not."""
    from ...archive.archive import verify_archive as verify

    node = call.node
    keys = [node.identity, *node.retired]
    with scratch(node.home.path, ".car") as path:
        size = await receive_file(call.request, path, body_limit(VERIFY_ROUTE, node))
        if size == 0:
            raise ValidationFailedError([{"field": "", "code": "required",
                                          "message": f"send the archive as {CAR_TYPE}"}])
        try:
            # One process: a running node does not fork its verification.
            report = await asyncio.to_thread(verify, path, keys, workers=1)
        except UsagiError as exc:
            cid = getattr(exc, "cid", None)
            return web.json_response({"ok": False, "bytes": size, "error": {
                "code": exc.code, "message": str(exc),
                "cid": None if cid is None else str(cid)}})
    return web.json_response({
        "ok": not report.quarantined, "bytes": size,
        "root": None if report.root is None else str(report.root), "keyed": report.keyed,
        "by": report.by, "created_at": report.created_at, "filter": report.filter,
        "blocks": report.blocks, "pages": report.pages, "documents": report.documents,
        "acks": report.acks, "threads": report.threads,
        "partial_threads": report.partial_threads,
        "quarantined": [{"cid": str(q.cid), "code": q.code, "reason": q.reason}
                        for q in report.quarantined],
        "error": None})


VERIFY_ROUTE: Final = Route("POST", "/api/v1/archive/verify", "verifyArchive", "read", UPLOAD_MAX,
                            verify_archive, stream=True)
