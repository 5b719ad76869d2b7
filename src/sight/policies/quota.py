"""Per-team quotas counted in images (not requests), on the ``limits`` library: in memory by default,
Redis (``async+redis://``) when several servers share one quota."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from sight.config import RateLimitSettings
from sight.errors import RateLimitedError

log = logging.getLogger(__name__)


class TeamRateLimiter:
    def __init__(self, settings: RateLimitSettings) -> None:
        self.enabled = settings.images_per_minute is not None
        if not self.enabled:
            return
        from limits import RateLimitItemPerMinute
        from limits.aio.strategies import MovingWindowRateLimiter
        from limits.storage import storage_from_string

        self.item = RateLimitItemPerMinute(settings.images_per_minute or 0)
        options: dict[str, Any] = {}
        if settings.storage_uri.startswith("async+redis://"):
            import coredis

            # Our own pool, so shutdown can close its connections (limits has no close of its own).
            self._pool = coredis.ConnectionPool.from_url(settings.storage_uri.removeprefix("async+"))
            options["connection_pool"] = self._pool
        self.strategy = MovingWindowRateLimiter(storage_from_string(settings.storage_uri, **options))

    _pool: Any = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.disconnect()

    async def charge(self, team_id: str, images: int) -> None:
        """Take ``images`` from the team's window, or raise ``RateLimitedError`` with a Retry-After."""
        if not self.enabled or images <= 0:
            return
        try:
            allowed = await self.strategy.hit(self.item, team_id, cost=images)
            if allowed:
                return
            stats = await self.strategy.get_window_stats(self.item, team_id)
        except Exception as exc:  # the quota store is down: serve rather than refuse everyone
            log.warning("rate limit storage unavailable, not limiting: %s", type(exc).__name__)
            return
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitedError(
            f"team quota of {self.item.amount} images per minute reached (this request has {images})", retry
        )
