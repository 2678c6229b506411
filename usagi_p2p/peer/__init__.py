"""The partner-facing face: the peer listener (``/usagi/v1/*``, ``/ipfs/{cid}``).

Everything that arrives here may be hostile (DESIGN.md, "Adversaries"): the
listener's limits come first, then request signatures, then the node.
"""
