"""What a historical collection costs: UtilityAPI's on-demand price table, as pure functions.

UtilityAPI's pricing page: per meter, 1–7 months cost
$1.50 a month; 8–12 months $12 flat; 13–36 months $12 plus $1.50 a month past 12. Failed
collections are charged only for the months actually collected, so an estimate is an upper
bound. The two amounts are settings (COLLECTIONS_PRICE_PER_MONTH, COLLECTIONS_PRICE_FLAT_12).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from .models import MAX_MONTHS, MIN_MONTHS

FLAT_FROM, FLAT_UNTIL = 8, 12  # the flat band
# The account's default duration is 12 or 36 months (the vendor's historical-collection page);
# when a request leaves it empty, the cost lies between those two.
DEFAULT_DURATIONS = (12, 36)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Prices:
    per_month: Decimal
    flat_12: Decimal

    @classmethod
    def from_settings(cls) -> Prices:
        """The configured prices (settings hold floats or strings; money is kept in Decimal)."""
        return cls(
            per_month=Decimal(str(settings.COLLECTIONS_PRICE_PER_MONTH)),
            flat_12=Decimal(str(settings.COLLECTIONS_PRICE_FLAT_12)),
        )


@dataclass(frozen=True)
class Estimate:
    """The most a trigger can cost: `low` == `high` when the duration is known."""

    meters: int
    months: int | None
    low: Decimal
    high: Decimal

    @property
    def is_range(self) -> bool:
        return self.low != self.high

    def __str__(self) -> str:
        if not self.is_range:
            return format_usd(self.low)
        return f"{format_usd(self.low)} – {format_usd(self.high)}"


def price_per_meter(months: int, prices: Prices | None = None) -> Decimal:
    """The on-demand price of collecting `months` (1–36) of history for one meter."""
    if isinstance(months, bool) or not isinstance(months, int):
        raise TypeError(f"months must be an int, not {type(months).__name__}")
    if not MIN_MONTHS <= months <= MAX_MONTHS:
        raise ValueError(f"months must be from {MIN_MONTHS} to {MAX_MONTHS}, not {months}")
    prices = prices or Prices.from_settings()
    if months < FLAT_FROM:
        return prices.per_month * months
    if months <= FLAT_UNTIL:
        return prices.flat_12
    return prices.flat_12 + prices.per_month * (months - FLAT_UNTIL)


def estimate(meters: int, months: int | None, prices: Prices | None = None) -> Estimate:
    """The most `meters` meters cost for `months` (None: the account's default, 12 or 36)."""
    prices = prices or Prices.from_settings()
    durations = DEFAULT_DURATIONS if months is None else (months, months)
    low, high = (price_per_meter(m, prices) * meters for m in durations)
    return Estimate(meters=meters, months=months, low=low, high=high)


def format_usd(amount: Decimal) -> str:
    """US dollars with thousands separators and cents: $30,000.00."""
    return f"${amount.quantize(CENT):,}"
