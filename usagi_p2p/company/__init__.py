"""The company-facing face: the CLI, the views it prints, the demo.

Thin clients of the core node's operations; never reachable from the peer
listener.
"""
