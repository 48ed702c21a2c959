"""Pacing calls to an AWS API whose quota is shared and not adjustable: an adaptive rate (no I/O).

:class:`AdaptiveRate` decides when the next call may go: it starts at ``initial`` calls per second,
halves on a throttled call (down to ``floor``) and, after each ``quiet_seconds`` without a throttled
call, rises by ``step`` (up to ``ceiling``): additive increase, multiplicative decrease. A call booked
ahead is spaced at the rate that holds when its turn comes, rises included (a burst booked at a low rate
does not keep it low); calls throttled before the first call at the halved pace went out were sent at the
old pace, and count as one throttle with the one that halved it. The clock is injected, so that the arithmetic is
tested without waiting; the caller sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AdaptiveRate:
    """Calls per second that adapt to throttling; :meth:`reserve` books the next call's slot.

    :param initial: calls per second at first.
    :param ceiling: the most calls per second it rises to.
    :param floor: the fewest calls per second it halves down to.
    :param quiet_seconds: how long without a throttled call before each rise by ``step``.
    :param step: calls per second added after each quiet spell.
    :param clock: monotonic seconds (``time.monotonic``).
    """

    def __init__(
        self,
        initial: float,
        ceiling: float,
        *,
        floor: float = 0.5,
        quiet_seconds: float = 5.0,
        step: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < floor <= initial <= ceiling:
            raise ValueError(f"rates must be 0 < floor <= initial <= ceiling, not {floor}, {initial}, {ceiling}")
        if quiet_seconds <= 0 or step < 0:
            raise ValueError(f"quiet_seconds must be positive and step not negative, not {quiet_seconds}, {step}")
        self.ceiling, self.floor, self.quiet_seconds, self.step = ceiling, floor, quiet_seconds, step
        self.clock = clock
        self._rate = float(initial)
        self._quiet_since = clock()
        self._next_slot = clock()
        #: the first slot at the pace of the last halving: a call throttled before it went out was sent at the
        #: old pace, and tells nothing that the halving did not already take into account
        self._halved_for = float("-inf")
        #: throttled calls reported so far
        self.throttles = 0

    @property
    def rate(self) -> float:
        """Calls per second now (after the rises that the quiet spells since the last throttle earned)."""
        now = self.clock()
        spells = int((now - self._quiet_since) // self.quiet_seconds)
        if spells > 0:
            self._rate = min(self.ceiling, self._rate + spells * self.step)
            self._quiet_since += spells * self.quiet_seconds
        return self._rate

    def rate_at(self, moment: float) -> float:
        """Calls per second at ``moment`` (clock seconds), if no call is throttled until then."""
        current = self.rate
        spells = max(0, int((moment - self._quiet_since) // self.quiet_seconds))
        return min(self.ceiling, current + spells * self.step)

    def reserve(self) -> float:
        """Book the next call: the seconds to wait before sending it (``0``: at once).

        The slot after it is one interval later at the rate of that moment: calls booked while the rate is
        low do not keep it low once it has risen again.
        """
        now = self.clock()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.rate_at(slot)
        return slot - now

    def throttled(self) -> None:
        """A call was throttled: restart the quiet spell; halve the rate and push the next slot one new interval
        out, unless the last halving's first slot has not come yet (the call was sent at the old pace).
        """
        self.throttles += 1
        now = self.clock()
        current = self.rate
        self._quiet_since = now
        if now < self._halved_for:
            return
        self._rate = max(self.floor, current / 2)
        self._next_slot = max(self._next_slot, now + 1.0 / self._rate)
        self._halved_for = self._next_slot
