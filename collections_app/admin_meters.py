"""The meter registry's admin (synced meters, bulk trigger)."""
