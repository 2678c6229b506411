"""What a company does with its node: one operation per capability.

The CLI calls these today; the local API and the web UI will call the same
ones (DESIGN.md, "Two faces"). Each takes typed arguments, returns typed
values (dataclasses), raises typed errors (``usagi_p2p.node.errors``,
``kernel.errors``) and prints nothing: what a person sees is decided by the
face that asked (``usagi_p2p.company.views`` and the CLI). No face reaches
into ``node.ledger``; what it needs from the ledger it asks for here.

    documents.py   sending: send, answer, answer_body, deliver_now, await_ack,
                   retry_outbox, requeue_undelivered, outbox_counts
                   sent_document; outgoing, send_groups (several sends, one commit), refusals
                   looking: list_documents, page_documents, show_document,
                   document_block, thread_documents, verify_document
    requests.py    keyed requests (Idempotency-Key): claim_request, finish_request,
                   release_request
    partners.py    invite, add_partner, partners, partner, rename_partner,
                   set_partner_status, quota, set_quota
    plugins.py     plugin_list, extract_preview, user_list, enable_plugin,
                   disable_plugin, configure_plugin, add_user, move_user, remove_user
                   (on a running node, or on ``offline(home)``)
    search.py      search_documents, reindex_search
    this_node.py   node_status, key_info, rotate_key, announce_key, resume_outbox
    commerce.py    document_arithmetic, match_documents (issue 19: docs/commerce.md)
    paper.py       profile, set_profile, export_source (the parties on paper; UBL export)
    events.py      events_after, event_range, commit_signal, prune_events, webhooks,
                   add_webhook, remove_webhook, webhook_log, replay_webhook, webhook_*

Faces import this package (``from usagi_p2p.node import operations``), not
its modules.
"""

from .commerce import document_arithmetic, match_documents
from .documents import (
    ANSWERS,
    CARRIED,
    MAX_PAGE,
    SERVE_STATE,
    AckView,
    Check,
    Delivery,
    DocumentEntry,
    DocumentPage,
    DocumentView,
    Outgoing,
    Prepare,
    Refused,
    ThreadEntry,
    Verification,
    answer,
    answer_body,
    await_ack,
    deliver_now,
    document_block,
    fill_extracted,
    list_documents,
    outbox_counts,
    outgoing,
    page_documents,
    refusals,
    requeue_undelivered,
    retry_outbox,
    send,
    send_groups,
    sent_document,
    show_document,
    thread_documents,
    verify_document,
)
from .events import (
    EVENT_TYPES,
    LOST,
    Event,
    Webhook,
    WebhookAttempt,
    add_webhook,
    commit_signal,
    event_range,
    events_after,
    prune_events,
    remove_webhook,
    replay_webhook,
    webhook_attempted,
    webhook_due,
    webhook_enqueue,
    webhook_follow,
    webhook_log,
    webhook_next_due,
    webhooks,
)
from .paper import PARTY_FIELDS, ExportSource, export_source, profile, set_profile
from .partners import (
    PartnerChange,
    PartnerStatus,
    QuotaUsage,
    add_partner,
    invite,
    partner,
    partners,
    quota,
    rename_partner,
    set_partner_status,
    set_quota,
)
from .plugins import (
    LinePreview,
    PluginScope,
    PluginSettings,
    Preview,
    UserInfo,
    add_user,
    configure_plugin,
    disable_plugin,
    enable_plugin,
    extract_preview,
    move_user,
    offline,
    plugin_list,
    remove_user,
    user_list,
)
from .requests import (
    KEY_TTL,
    KEYS_PER_TOKEN,
    Claimed,
    Replay,
    claim_request,
    finish_request,
    release_request,
)
from .search import MAX_LIMIT, SearchHit, SearchPage, reindex_search, search_documents
from .this_node import (
    KeyInfo,
    KeyRotation,
    NodeStatus,
    Rotation,
    announce_key,
    key_info,
    node_status,
    resume_outbox,
    rotate_key,
)

__all__ = [  # the values, then the operations of the module docstring
    "ANSWERS", "CARRIED", "SERVE_STATE", "AckView", "Check", "Delivery", "DocumentEntry",
    "DocumentView", "KeyInfo", "KeyRotation", "NodeStatus", "PartnerChange", "PartnerStatus",
    "Prepare", "QuotaUsage", "Rotation", "SearchHit", "SearchPage", "ThreadEntry",
    "Verification", "fill_extracted",
    "send", "outgoing", "send_groups", "refusals", "Outgoing", "Refused",
    "answer", "answer_body", "deliver_now", "requeue_undelivered", "outbox_counts",
    "await_ack", "retry_outbox",
    "list_documents", "show_document", "thread_documents", "verify_document", "invite",
    "add_partner", "partners", "partner", "rename_partner", "set_partner_status", "quota",
    "set_quota", "node_status", "key_info", "rotate_key", "announce_key", "resume_outbox",
    "LinePreview", "PluginScope", "PluginSettings", "Preview", "UserInfo", "offline",
    "plugin_list", "extract_preview", "user_list", "enable_plugin", "disable_plugin",
    "configure_plugin", "add_user", "move_user", "remove_user",
    # the local API's documents and keyed requests (issue 16)
    "MAX_PAGE", "DocumentPage", "sent_document", "page_documents", "document_block",
    "KEY_TTL", "KEYS_PER_TOKEN", "Claimed", "Replay", "claim_request", "finish_request",
    "release_request",
    "search_documents", "reindex_search", "MAX_LIMIT", "SearchHit", "SearchPage",
    "EVENT_TYPES", "LOST", "Event", "Webhook", "WebhookAttempt", "events_after", "event_range",
    "commit_signal", "prune_events", "webhooks", "add_webhook", "remove_webhook", "webhook_log",
    "replay_webhook", "webhook_follow", "webhook_enqueue", "webhook_due", "webhook_attempted",
    "webhook_next_due",
    # commercial integrity (issue 19)
    "document_arithmetic", "match_documents",
    # the parties on paper and exports (issue 19, docs/formats.md)
    "PARTY_FIELDS", "ExportSource", "profile", "set_profile", "export_source"]
