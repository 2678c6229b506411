"""Routes for partners: list, get, invite, add, rename, suspend, resume, remove, quotas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from kernel.plugin import Finding

from ...node import operations
from ...node.invitation import name_problem
from ...node.ledger import Partner
from .calls import Call, Field, parse_object
from .problems import FieldError, ValidationFailedError

# -- partners, plugins, users, archive (issue 16) --------------------------------
#
# Partners are resources named by DID or name (``{partner}``: as everywhere, a
# DID, a name, or a unique name prefix). Changing one follows GitHub's REST
# style: PATCH for its own fields (the name), a sub-resource for a state
# (``PUT …/suspended`` suspends, ``DELETE …/suspended`` resumes, as GitHub's
# suspended users), DELETE for removal (the record stays, status
# ``removed``, docs/spec.md 10), PUT/DELETE ``…/quota`` for its own quota.

#: Days an invitation may be valid at most through the API.
MAX_INVITATION_DAYS: Final = 365


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _partner_json(p: Partner) -> dict[str, Any]:
    return {"did": p.did, "name": p.name, "endpoint": p.endpoint, "status": p.status,
            "added_at": _time(p.added_at), "rotated_to": p.rotated_to,
            "valid_until": _time(p.valid_until)}


def usage_json(q: operations.QuotaUsage) -> dict[str, Any]:
    return {"partner": q.partner, "did": q.did, "docs": q.docs, "docs_quota": q.docs_quota,
            "bytes": q.bytes, "bytes_quota": q.bytes_quota, "own": q.own,
            "resets_at": _time(q.resets_at)}


def finding_json(f: Finding) -> dict[str, str]:
    return f.to_json()


async def _named(call: Call) -> Partner:
    """The partner of the path's ``{partner}``; 404 ``not_found`` when none."""
    return await operations.partner(call.node, call.request.match_info["partner"])


async def list_partners(call: Call) -> web.Response:
    partners = await operations.partners(call.node)
    return web.json_response({"partners": [_partner_json(p) for p in partners]})


async def get_partner(call: Call) -> web.Response:
    return web.json_response(_partner_json(await _named(call)))


def _days(data: dict[str, Any]) -> list[FieldError]:
    days = data.get("valid_for", 7)
    if not 1 <= days <= MAX_INVITATION_DAYS:
        return [{"field": "valid_for", "code": "invalid",
                 "message": f"a whole number of days, 1..{MAX_INVITATION_DAYS}"}]
    return []


async def create_invitation(call: Call) -> web.Response:
    data = parse_object(call, (Field("valid_for", int),), _days)
    invitation = await operations.invite(call.node, timedelta(days=data.get("valid_for", 7)))
    return web.json_response(
        {"invitation": invitation.text(), "name": invitation.name, "did": invitation.did,
         "endpoint": invitation.endpoint,
         "expires": invitation.expires.astimezone(UTC).isoformat().replace("+00:00", "Z")},
        status=201)


async def add_partner(call: Call) -> web.Response:
    data = parse_object(call, (Field("invitation", str, required=True, max_length=8000),
                               Field("introduce", bool)))
    added = await operations.add_partner(call.node, data["invitation"],
                                         introduce=data.get("introduce", True))
    return web.json_response(_partner_json(added), status=201)


def _name_rule(data: dict[str, Any]) -> list[FieldError]:
    if "name" not in data:
        return []
    try:
        name_problem(data["name"], ValueError)
    except ValueError as exc:
        return [{"field": "name", "code": "invalid", "message": str(exc)}]
    return []


async def update_partner(call: Call) -> web.Response:
    data = parse_object(call, (Field("name", str, required=True, max_length=200),), _name_rule)
    partner = await _named(call)
    change = await operations.rename_partner(call.node, partner.did, data["name"])
    return web.json_response(_partner_json(change.after))


async def _set_status(call: Call, status: operations.PartnerStatus) -> web.Response:
    partner = await _named(call)
    change = await operations.set_partner_status(call.node, partner.did, status)
    return web.json_response(_partner_json(change.after))


async def suspend_partner(call: Call) -> web.Response:
    return await _set_status(call, "suspended")


async def resume_partner(call: Call) -> web.Response:
    return await _set_status(call, "active")


async def remove_partner(call: Call) -> web.Response:
    return await _set_status(call, "removed")


async def partner_usage(call: Call) -> web.Response:
    partner = await _named(call)
    return web.json_response(usage_json(await operations.quota(call.node, partner.did)))


def _quota_rule(data: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = [
        {"field": key, "code": "invalid", "message": "a whole number >= 0"}
        for key in ("docs", "bytes") if key in data and data[key] < 0]
    return errors


async def set_partner_quota(call: Call) -> web.Response:
    data = parse_object(call, (Field("docs", int), Field("bytes", int)), _quota_rule)
    if not data:
        raise ValidationFailedError([{"field": "", "code": "required",
                                      "message": "give docs, bytes or both"}])
    partner = await _named(call)
    usage = await operations.set_quota(call.node, partner.did, docs=data.get("docs"),
                                       size=data.get("bytes"))
    return web.json_response(usage_json(usage))


async def drop_partner_quota(call: Call) -> web.Response:
    partner = await _named(call)
    return web.json_response(usage_json(
        await operations.set_quota(call.node, partner.did, default=True)))
