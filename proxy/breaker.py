"""A circuit breaker: stop calling a dependency that keeps failing, then probe it, one call at a time.

*Closed*: calls go through; ``threshold`` failures in a row open it. *Open*: calls are refused at once for
``cooldown`` seconds. *Half-open*: then one call (the probe) goes through while the others are still refused;
its success closes the breaker, its failure opens it for another ``cooldown``.

Used for Redis (:class:`proxy.cache.breaker.CircuitBreakingStore`) and for Label Studio
(:class:`proxy.upstream.LabelStudioClient`). Single event loop, no locks needed.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._asked = False  # whether a call came since the breaker last opened or last heard answered_elsewhere
        if on_change is not None:
            on_change(State.CLOSED)

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() >= self._open_until:
            self._set(State.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one (the probe) may, until it reports back."""
        state = self.state
        if state is State.CLOSED:
            return True
        self._asked = True
        if state is State.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._probing = False
        if self._state is not State.CLOSED:
            self._set(State.CLOSED)

    def failed(self) -> None:
        self._failures += 1
        self._probing = False
        if self._state is State.HALF_OPEN or self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown
            self._asked = False
            self._set(State.OPEN)

    def abandoned(self) -> None:
        """A call that was let through ended without a verdict (it was cancelled): let another one probe."""
        self._probing = False

    def answered_elsewhere(self) -> bool:
        """The dependency answered a call made outside the breaker (a background check, which may not exercise
        what failed): once the cooldown has passed, and only if no call came since the breaker opened or since
        the last such answer, that stands for the probe nobody sent, and the breaker closes (returns True).
        With calls coming, their probes decide; still cooling down, nothing changes."""
        asked, self._asked = self._asked, False
        if self.state is State.HALF_OPEN and not asked and not self._probing:
            self.succeeded()
            return True
        return False

    @contextmanager
    def guard(
        self,
        refused: Callable[[], BaseException],
        *,
        failures: tuple[type[BaseException], ...] = (),
        answers: tuple[type[BaseException], ...] = (),
    ) -> Iterator[Verdict]:
        """One call through the breaker, the one protocol both breakers follow.

        Refused at once (``refused()`` is raised) while open. The call's outcome is the breaker's verdict: an
        exception in ``failures`` is a failure; one in ``answers`` a success (the dependency answered, if not
        usefully); any other exception (a cancellation, a slot on the move) no verdict, so that another call
        may probe. A call that ends normally is a success, unless it gave its own verdict through the
        :class:`Verdict` it is handed (an answer that says the dependency is unwell).
        """
        if not self.allow():
            raise refused()
        verdict = Verdict(self)
        try:
            yield verdict
        except failures:
            verdict.failed()
            raise
        except answers:
            verdict.succeeded()
            raise
        except BaseException:
            verdict.abandoned()
            raise
        verdict.succeeded()

    def _set(self, state: State) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)


class Verdict:
    """How one guarded call went, told to its breaker once (the first verdict counts)."""

    __slots__ = ("_breaker",)

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker: CircuitBreaker | None = breaker

    def succeeded(self) -> None:
        if self._breaker is not None:
            self._breaker.succeeded()
            self._breaker = None

    def failed(self) -> None:
        if self._breaker is not None:
            self._breaker.failed()
            self._breaker = None

    def abandoned(self) -> None:
        if self._breaker is not None:
            self._breaker.abandoned()
            self._breaker = None
