"""The core node: one company's writer of its own trades.

Sending, receiving, partners and invitations, the ledger (the only owner of
``ledger.db``), the home folder and key files, users, the plugin host, quotas
and the one table of errors. Nothing here knows which face asked: the peer
listener (``usagi_p2p.peer``), the CLI and, later, the local API and the UI
(``usagi_p2p.company``) all call the same operations.
"""
