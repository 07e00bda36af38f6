"""Every write: the status transitions (one table) and the rows around them, a module per seam.

- requests: the entry points (request_collection, request_collections, retry_failed);
- budget: what a request costs, the budgets that hold it, approving and rejecting it;
- broker: telling workers there is due work, and the periodic sweep;
- leases: claiming due rows (with coalesced companions) before a call;
- policy: what one answer means for a request (the retry policy);
- outcomes: recording what a call answered, or giving rows back untried;
- transitions: the one table of allowed status changes;
- registry and bulk_trigger: the meter registry's sync and its bulk trigger;
- authorizations: the registry's authorizations (sync, events, their meters' flags);
- pages: reading a paged vendor listing through the gate;
- tokens: API tokens.

The send pipeline itself (claim, gate, POST, record) is collections_app.delivery.
"""

from .broker import sweep
from .requests import request_collection, request_collections, retry_failed

__all__ = ["request_collection", "request_collections", "retry_failed", "sweep"]
