"""Capture the metadata of every network call a Python process makes. Standard library only."""
from interceptor.event import AUDIT, EGRESS, INGRESS, NetEvent

__all__ = ["NetEvent", "EGRESS", "INGRESS", "AUDIT"]
