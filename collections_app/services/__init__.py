"""Every write to a collection request and every status transition.

- requests: the entry points (request_collection, request_collections, retry_failed);
- broker: dispatching "look at row X" messages, and the periodic sweep;
- outcomes: claiming due rows, deferring them, recording what one POST answered;
- transitions: the one table of allowed status changes.

The send pipeline itself (claim, gate, POST, record) is in delivery.py.
"""

from .broker import SWEEP_BATCH, dispatch, sweep
from .outcomes import (
    Call,
    backoff,
    claim,
    defer,
    lease_seconds,
    record_outcome,
    record_split,
    renew,
)
from .requests import request_collection, request_collections, retry_failed
from .transitions import ALLOWED_TRANSITIONS, TransitionError, transition

__all__ = [
    "ALLOWED_TRANSITIONS",
    "SWEEP_BATCH",
    "Call",
    "TransitionError",
    "backoff",
    "claim",
    "defer",
    "dispatch",
    "lease_seconds",
    "record_outcome",
    "record_split",
    "renew",
    "request_collection",
    "request_collections",
    "retry_failed",
    "sweep",
    "transition",
]
