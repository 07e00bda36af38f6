from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from .models import MAX_MONTHS, MIN_MONTHS
from .validation import clean_duration, clean_meters, parse_meter_text


class CollectionRequestForm(forms.Form):
    """The admin's add form: people type meters one per line or comma separated."""

    meters = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "cols": 40}),
        help_text="Meter uids, one per line or comma separated.",
    )
    collection_duration = forms.IntegerField(
        required=False,
        min_value=MIN_MONTHS,
        max_value=MAX_MONTHS,
        help_text=f"Months to collect, {MIN_MONTHS}–{MAX_MONTHS}. Empty: the account's default "
        "(12 or 36).",
    )

    def clean_meters(self) -> list[str]:
        return _field(clean_meters, parse_meter_text(self.cleaned_data["meters"]))

    def clean_collection_duration(self) -> int | None:
        return _field(clean_duration, self.cleaned_data.get("collection_duration"))


def _field(rule: Any, value: Any) -> Any:
    try:
        return rule(value)
    except ValidationError as err:
        raise ValidationError(
            [m for messages in err.message_dict.values() for m in messages]
        ) from err
