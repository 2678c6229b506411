"""The archive page: export the history as a sealed CAR (with progress), verify an uploaded one.

Export (the company's, as ``GET /api/v1/archive`` needs the ``admin``
scope): the form starts an **export job** (``usagi_p2p.archive.export_archive``
writing to a temporary file in ``HOME/tmp``); the page polls the job's
progress (documents written of the snapshot's total, every 0.7 s through
htmx) and, when it is written, offers the file as a download with its
length, so the browser shows the download's own progress too. One job at a
time per node: asking again while one runs shows that one. A finished job's
file is kept for :data:`JOB_TTL` seconds or until the next export, and
removed when the node stops; only the session that started a job sees it.

Verify (anyone signed in, as ``POST /api/v1/archive/verify``): the page's
script sends the chosen file as the request body (``application/vnd.ipld.car``,
the CSRF token in ``X-CSRF-Token``), showing the upload's progress; it is
written to a temporary file within the config's ``local_upload_max`` (as the
API does: usagi_p2p/company/api/transfer.py), verified with this node's keys
in a worker thread, removed, and the report is rendered in words. Without
JavaScript the form posts ``multipart/form-data`` instead (small files only:
aiohttp's form limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from kernel.errors import UsagiError

from ...archive.archive import ExportReport, VerifyReport
from ...archive.archive import export_archive as export
from ...archive.archive import verify_archive as verify
from ...node import operations
from ...node.node import Node
from ..api.archive import CAR_TYPE, VERIFY_ROUTE
from ..api.calls import body_limit
from ..api.transfer import receive_file, scratch
from .admin import company_only, form_of, is_company, size_text
from .base import form_day, node_of, render, visitor

__all__ = ["ROUTES", "JOBS", "JOB_TTL", "ExportJob", "ExportJobs", "install"]

#: Seconds a written export stays downloadable.
JOB_TTL: Final = 1800.0


@dataclass(slots=True)
class ExportJob:
    """One export: its progress while it runs, its file and report when done."""

    id: str
    #: The session that started it (its key): only it sees the job.
    owner: str
    path: Path
    filename: str
    started: float
    written: int = 0
    total: int = 0
    report: ExportReport | None = None
    error: UsagiError | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.report is None and self.error is None


class ExportJobs:
    """The export jobs of one node's UI (at most one running, one kept)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.jobs: dict[str, ExportJob] = {}

    def get(self, job_id: str, owner: str) -> ExportJob | None:
        self._expire()
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def running(self) -> ExportJob | None:
        return next((j for j in self.jobs.values() if j.running), None)

    def start(self, owner: str, *, partner: str | None, since: float | None,
              until: float | None) -> ExportJob:
        """A new job writing the archive; older finished jobs and their files are dropped."""
        for old in list(self.jobs.values()):
            if not old.running:
                self._drop(old)
        folder = self.node.home.path / "tmp"
        folder.mkdir(mode=0o700, exist_ok=True)
        job_id = secrets.token_urlsafe(16)
        stamp = self.node.now().strftime("%Y%m%d")
        job = ExportJob(job_id, owner, folder / f"ui-{job_id}.car", f"usagi-{stamp}.car",
                        time.monotonic())

        def progress(written: int, total: int) -> None:  # called from the export's thread
            job.written, job.total = written, total

        async def run() -> None:
            try:
                job.report = await export(self.node, job.path, partner=partner, since=since,
                                          until=until, progress=progress)
                job.written = job.total = job.report.documents
            except UsagiError as exc:
                job.error = exc
                job.path.unlink(missing_ok=True)

        job.task = asyncio.create_task(run(), name=f"ui export {job_id}")
        self.jobs[job_id] = job
        return job

    def _expire(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if not job.running and now - job.started > JOB_TTL:
                self._drop(job)

    def _drop(self, job: ExportJob) -> None:
        self.jobs.pop(job.id, None)
        job.path.unlink(missing_ok=True)

    async def close(self) -> None:
        """Stop a running export and remove every job's file (the node stops)."""
        for job in list(self.jobs.values()):
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, UsagiError):
                    await job.task
            self._drop(job)


JOBS: Final = web.AppKey("usagi_ui_archive", ExportJobs)


def install(app: web.Application, node: Node) -> None:
    """Keep the export jobs of ``node`` on ``app``; their files go when it stops."""
    jobs = ExportJobs(node)
    app[JOBS] = jobs
    # An export a stopped node left (its thread outlived the stop): nobody can fetch it.
    for stale in (node.home.path / "tmp").glob("ui-*.car"):
        stale.unlink(missing_ok=True)

    async def cleanup(_: web.Application) -> None:
        await jobs.close()

    app.on_cleanup.append(cleanup)


def _owner(request: web.Request) -> str:
    session = visitor(request).session
    assert session is not None  # the middleware let only a signed-in person in
    return session.key


def _day(text: str | None, *, end: bool = False) -> float | None:
    """A date input as the start (or end) of that day, UTC, in seconds."""
    moment = form_day(text, end=end)
    return moment.timestamp() if moment is not None else None


def _job_context(job: ExportJob | None, language: str) -> dict[str, Any]:
    if job is None:
        return {"job": None}
    share = 100 if not job.running else (round(100 * job.written / job.total)
                                         if job.total else 0)
    return {"job": job, "share": share,
            "size": size_text(job.report.bytes, language) if job.report else None}


async def _page_context(request: web.Request, job: ExportJob | None) -> dict[str, Any]:
    node = node_of(request)
    language = visitor(request).language
    partners = [p for p in await operations.partners(node) if p.status != "rotated"]
    return {"company_session": is_company(request), "partners": partners,
            "upload_max": size_text(node.config.local_upload_max, language),
            "car_type": CAR_TYPE, "report": None, "error": None, "missing": False,
            **_job_context(job, language)}


async def archive_page(request: web.Request) -> web.StreamResponse:
    job = request.app[JOBS].get(request.query.get("job", ""), _owner(request))
    return render(request, "archive.html", await _page_context(request, job))


async def start_export(request: web.Request) -> web.StreamResponse:
    """Start an export of the history (or one partner's, or a window)."""
    company_only(request)
    form = await form_of(request)
    jobs = request.app[JOBS]
    job = jobs.running()
    if job is None or job.owner != _owner(request):
        partner = form.get("partner") or None
        did = (await operations.partner(node_of(request), partner)).did if partner else None
        job = jobs.start(_owner(request), partner=did, since=_day(form.get("since")),
                         until=_day(form.get("until"), end=True))
    raise web.HTTPSeeOther(location=f"/archive?job={job.id}")


async def export_progress(request: web.Request) -> web.StreamResponse:
    """The job's progress as a fragment (polled by the page while it runs)."""
    job = request.app[JOBS].get(request.match_info["job"], _owner(request))
    if job is None:
        raise web.HTTPNotFound()
    return render(request, "archive_job.html", _job_context(job, visitor(request).language))


async def download(request: web.Request) -> web.StreamResponse:
    """The written archive, with its length (the browser shows the download's progress)."""
    job = request.app[JOBS].get(request.match_info["job"], _owner(request))
    if job is None or job.report is None or not job.path.exists():
        raise web.HTTPNotFound()
    return web.FileResponse(job.path, chunk_size=256 << 10, headers={
        "Content-Type": CAR_TYPE,
        "Content-Disposition": f'attachment; filename="{job.filename}"',
        "Usagi-Archive-Root": str(job.report.root),
        "Usagi-Archive-Documents": str(job.report.documents)})


async def verify_upload(request: web.Request) -> web.StreamResponse:
    """Verify an uploaded archive with this node's keys; the report in words."""
    node = node_of(request)
    keys = [node.identity, *node.retired]
    with scratch(node.home.path, ".car") as path:
        if request.content_type == "multipart/form-data":  # the form without JavaScript
            posted = await request.post()
            upload = posted.get("archive")
            if not isinstance(upload, web.FileField):
                return await _report(request, missing=True)
            path.write_bytes(upload.file.read())
            size = path.stat().st_size
        else:
            size = await receive_file(request, path, body_limit(VERIFY_ROUTE, node))
        if size == 0:
            return await _report(request, missing=True)
        try:
            report = await asyncio.to_thread(verify, path, keys, workers=1)
        except UsagiError as exc:
            return await _report(request, error=exc, size=size)
    return await _report(request, report=report, size=size)


async def _report(request: web.Request, *, report: VerifyReport | None = None,
                  error: UsagiError | None = None, size: int = 0, missing: bool = False
                  ) -> web.Response:
    """The report alone for the page's script (``X-Usagi-Fragment``), else the whole page."""
    fragment = bool(request.headers.get("X-Usagi-Fragment"))
    context = {} if fragment else await _page_context(request, None)
    context.update({"report": report, "error": error, "missing": missing,
                    "error_cid": getattr(error, "cid", None),
                    "size": size_text(size, visitor(request).language)})
    return render(request, "archive_report.html" if fragment else "archive.html", context)


ROUTES: Final = [
    ("GET", "/archive", archive_page),
    ("POST", "/archive/export", start_export),
    ("GET", "/archive/export/{job}", export_progress),
    ("GET", "/archive/export/{job}/download", download),
    ("POST", "/archive/verify", verify_upload),
]
