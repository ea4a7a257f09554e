"""``[merchant_api]``: the merchants' HTTP API and the channels' notifications, on a listener of
their own. Off unless ``listen`` is set."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field

# WeChat Pay's own retry schedule for its notifications, 24 h 4 min in all: the merchants'
# notifications follow it unless configured otherwise.
WECHAT_SCHEDULE_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)


class MerchantApiSection(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    listen: Annotated[str, Meta(pattern=r"^([^:\s]+:\d{1,5})?$")] = ""  # "": no merchant API
    # Where the channels reach this listener from outside, for their notifications
    # (``{public_url}/notify/CHANNEL``): the bank's https address behind its gateway, with no query
    # (the channels refuse one). "": http://listen, which a wildcard listen (0.0.0.0) cannot be.
    public_url: Annotated[str, Meta(pattern=r"^(https?://[^\s?#]+)?$")] = ""
    # A signed request's timestamp may be this far from now, and its nonce is refused again for as long.
    signature_window_s: Annotated[int, Meta(ge=30, le=3600)] = 300
    # How long a QR order can be paid when the request does not say (bounds: 1 min to 2 h).
    qr_expiry_s: Annotated[int, Meta(ge=60, le=7200)] = 900
    # Notifications to merchants: the waits between attempts, and each merchant endpoint's own
    # limits (a slow or dead one delays no other merchant's).
    notify_schedule_s: list[Annotated[float, Meta(gt=0)]] = field(default_factory=lambda: list(WECHAT_SCHEDULE_S))
    notify_concurrency: Annotated[int, Meta(ge=1, le=256)] = 32
    notify_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 5.0

    def problems(self) -> list[str]:
        """What is wrong across its fields, by path: a wildcard listen is no address to be told."""
        if not self.public_url and self.listen.rpartition(":")[0] == "0.0.0.0":
            return [f"$.merchant_api.public_url: needed with listen {self.listen}, for the channels' notifications"]
        return []

    def notify_base(self) -> str:
        return (self.public_url or f"http://{self.listen}").rstrip("/")
