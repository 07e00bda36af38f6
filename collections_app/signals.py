"""Django signals for code that wants to hear about collection requests.

- `request_resolved` (sender: the CollectionRequest): it reached `pending` or `failed`.
- `collection_finished` (sender: the CollectionRequest): its `collection_outcome` was set;
  sent once per request, after the transaction that set it commits.
"""

from django.dispatch import Signal

request_resolved = Signal()
collection_finished = Signal()
