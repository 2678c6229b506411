"""Routes about this node: status, key, outbox retry, the OpenAPI document."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from ...node import operations
from .calls import OPENAPI_PATH, Call, Field, parse_object, version


async def status(call: Call) -> web.Response:
    """This node, as ``usagi status`` shows it (the command prints it when it rides)."""
    from .partners import usage_json

    node = call.node
    counts = await operations.outbox_counts(node)
    state = await operations.node_status(node)
    return web.json_response({
        "name": node.config.name,
        "did": node.did,
        "version": version(),
        "endpoints": {
            "peer": {"listen": call.endpoints.peer, "public": node.config.endpoint},
            "local": {"listen": call.endpoints.local, "socket": call.endpoints.local_socket},
        },
        "outbox": counts,
        "store": state.store,
        "partners": state.partners,
        "documents": {"sent": state.sent, "received": state.received},
        "quotas": [usage_json(q) for q in state.quotas],
    })


async def key(call: Call) -> web.Response:
    node = call.node
    return web.json_response({"did": node.did, "public_key": node.identity.public_key.hex(),
                              "retired": [i.did for i in node.retired]})


_RETRY_FIELDS: Final = (Field("partner", str, max_length=500),
                        Field("requeue_undelivered", bool))


async def outbox_retry(call: Call) -> web.Response:
    """Deliver now: wake the delivery loop; by default first queue the given-up documents again."""
    data = parse_object(call, _RETRY_FIELDS)
    node = call.node
    requeued = 0
    if data.get("requeue_undelivered", True):
        requeued = await operations.requeue_undelivered(node, data.get("partner"))
    node.wake.set()
    pending = (await operations.outbox_counts(node))["pending"]
    return web.json_response({"requeued": requeued, "pending": pending})


async def openapi(call: Call) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")
