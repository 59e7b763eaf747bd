from __future__ import annotations

import asyncio
import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from narwhal.errors import (
    ConnectionClosed,
    ErrorCode,
    MessageError,
    PeerUnknown,
    PoolFull,
    RemoteError,
    RequestTimeout,
)
from narwhal.net.retry import (
    DEFAULT_INITIAL_INTERVAL,
    DEFAULT_MAX_ELAPSED_TIME,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_MULTIPLIER,
    DEFAULT_RANDOMIZATION_FACTOR,
    Backoff,
    RetryConfig,
    is_transient,
    retry,
)

NO_JITTER = RetryConfig(randomization_factor=0.0)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


class Script:
    """An attempt that raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


# --- RetryConfig ---------------------------------------------------------------------------


def test_config_defaults_are_the_documented_constants() -> None:
    config = RetryConfig()
    assert config.initial_interval == DEFAULT_INITIAL_INTERVAL == 0.5
    assert config.max_interval == DEFAULT_MAX_INTERVAL == 15.0
    assert config.multiplier == DEFAULT_MULTIPLIER == 1.5
    assert config.randomization_factor == DEFAULT_RANDOMIZATION_FACTOR == 0.3
    assert config.max_elapsed_time is DEFAULT_MAX_ELAPSED_TIME is None


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        RetryConfig().multiplier = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_interval": 0},
        {"initial_interval": -1.0},
        {"initial_interval": float("nan")},
        {"max_interval": float("inf")},
        {"max_interval": 0.1},  # below initial_interval
        {"multiplier": 0.5},
        {"multiplier": float("inf")},
        {"randomization_factor": -0.1},
        {"randomization_factor": 1.0},
        {"max_elapsed_time": 0},
        {"max_elapsed_time": -5.0},
        {"initial_interval": True},
        {"multiplier": "2"},
    ],
)
def test_config_rejects_invalid_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryConfig(**kwargs)  # type: ignore[arg-type]


# --- Backoff ---------------------------------------------------------------------------------


def test_nominal_intervals_grow_geometrically_then_cap() -> None:
    backoff = Backoff(NO_JITTER)
    delays = [next(backoff) for _ in range(40)]
    expected = [min(0.5 * 1.5**n, 15.0) for n in range(40)]
    assert delays == expected
    assert delays[:3] == [0.5, 0.75, 1.125]
    assert delays[-1] == 15.0
    assert backoff.attempt == 40


def test_nominal_interval_survives_huge_attempt_counts() -> None:
    assert RetryConfig().nominal_interval(100_000) == 15.0


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    factor=st.floats(min_value=0.0, max_value=0.99),
    draws=st.integers(min_value=1, max_value=30),
)
def test_jitter_stays_within_the_randomization_band(seed: int, factor: float, draws: int) -> None:
    config = RetryConfig(randomization_factor=factor)
    backoff = Backoff(config, rng=random.Random(seed))
    for n in range(draws):
        nominal = config.nominal_interval(n)
        delay = next(backoff)
        assert nominal * (1 - factor) <= delay <= nominal * (1 + factor)


def test_jitter_covers_both_sides_of_the_nominal_interval() -> None:
    config = RetryConfig(initial_interval=10.0, max_interval=10.0)
    backoff = Backoff(config, rng=random.Random(7))
    delays = [next(backoff) for _ in range(2000)]
    assert min(delays) < 7.1 and max(delays) > 12.9  # the full ±30% band is used


def test_same_seed_same_delays() -> None:
    a = Backoff(RetryConfig(), rng=random.Random(42))
    b = Backoff(RetryConfig(), rng=random.Random(42))
    assert [next(a) for _ in range(20)] == [next(b) for _ in range(20)]


def test_backoff_stops_when_the_next_sleep_would_pass_max_elapsed() -> None:
    fake = FakeTime()
    config = attrs.evolve(NO_JITTER, max_elapsed_time=3.0)
    backoff = Backoff(config, clock=fake.clock)
    slept = []
    for delay in backoff:  # 0.5, 0.75, 1.125 -> 2.375; 2.375 + 1.6875 > 3
        slept.append(delay)
        fake.now += delay
    assert slept == [0.5, 0.75, 1.125]
    assert backoff.next_delay() is None
    assert backoff.elapsed == pytest.approx(2.375)


def test_reset_restarts_interval_and_elapsed_clock() -> None:
    fake = FakeTime()
    backoff = Backoff(attrs.evolve(NO_JITTER, max_elapsed_time=1.0), clock=fake.clock)
    assert backoff.next_delay() == 0.5
    fake.now = 5.0
    assert backoff.next_delay() is None
    backoff.reset()
    assert backoff.attempt == 0 and backoff.elapsed == 0.0
    assert backoff.nominal_interval == 0.5
    assert backoff.next_delay() == 0.5


# --- is_transient ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionClosed(), True),
        (RequestTimeout(), True),
        (PoolFull(), True),
        (RemoteError(ErrorCode.OVERLOADED), True),
        (PeerUnknown(), False),
        (MessageError(), False),
        (RemoteError(ErrorCode.INVALID), False),
        (OSError(), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError(), False),
        (KeyError(), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


# --- retry -----------------------------------------------------------------------------------


async def test_retry_retries_transient_errors_until_success() -> None:
    fake = FakeTime()
    attempt = Script(ConnectionClosed(), OSError(), RequestTimeout())
    calls: list[tuple[int, BaseException, float]] = []
    result = await retry(
        attempt,
        NO_JITTER,
        sleep=fake.sleep,
        clock=fake.clock,
        on_retry=lambda n, e, d: calls.append((n, e, d)),
    )
    assert result == "ok"
    assert attempt.calls == 4
    assert [n for n, _, _ in calls] == [1, 2, 3]
    assert [type(e) for _, e, _ in calls] == [ConnectionClosed, OSError, RequestTimeout]
    assert [d for _, _, d in calls] == fake.sleeps == [0.5, 0.75, 1.125]


async def test_retry_returns_first_success_without_sleeping() -> None:
    fake = FakeTime()
    assert await retry(Script(), RetryConfig(), sleep=fake.sleep) == "ok"
    assert fake.sleeps == []


@pytest.mark.parametrize("error", [PeerUnknown(), MessageError(), ValueError("bug")])
async def test_permanent_error_is_raised_at_once(error: Exception) -> None:
    fake = FakeTime()
    attempt = Script(error)
    on_retry_calls: list[int] = []
    with pytest.raises(type(error)) as info:
        await retry(
            attempt,
            RetryConfig(),
            sleep=fake.sleep,
            on_retry=lambda n, e, d: on_retry_calls.append(n),
        )
    assert info.value is error
    assert attempt.calls == 1
    assert fake.sleeps == [] and on_retry_calls == []


async def test_permanent_error_after_transient_ones_stops_retrying() -> None:
    fake = FakeTime()
    attempt = Script(ConnectionClosed(), PeerUnknown(), ConnectionClosed())
    with pytest.raises(PeerUnknown):
        await retry(attempt, RetryConfig(), sleep=fake.sleep)
    assert attempt.calls == 2


async def test_the_caller_may_say_which_errors_are_worth_retrying() -> None:
    # the primary's own output writes retry a full disk, permanent for peers
    fake = FakeTime()
    attempt = Script(PeerUnknown(), PeerUnknown())
    assert await retry(attempt, RetryConfig(), sleep=fake.sleep,
                       transient=lambda exc: isinstance(exc, PeerUnknown)) == "ok"
    assert attempt.calls == 3
    with pytest.raises(ConnectionClosed):  # and what it calls permanent is raised at once
        await retry(Script(ConnectionClosed()), RetryConfig(), sleep=fake.sleep,
                    transient=lambda exc: False)


async def test_max_elapsed_time_raises_the_last_error_unwrapped() -> None:
    fake = FakeTime()
    errors = [ConnectionClosed(f"failure {n}") for n in range(10)]
    attempt = Script(*errors)
    config = attrs.evolve(NO_JITTER, max_elapsed_time=3.0)
    with pytest.raises(ConnectionClosed) as info:
        await retry(attempt, config, sleep=fake.sleep, clock=fake.clock)
    assert attempt.calls == 4  # slept 0.5 + 0.75 + 1.125; the next 1.6875 would pass 3 s
    assert info.value is errors[3]
    assert fake.sleeps == [0.5, 0.75, 1.125]
    assert any("gave up after 4 attempts" in note for note in info.value.__notes__)


async def test_retry_forever_keeps_delays_capped() -> None:
    fake = FakeTime()
    attempt = Script(*[ConnectionClosed() for _ in range(200)])
    assert await retry(attempt, RetryConfig(), sleep=fake.sleep, rng=random.Random(1)) == "ok"
    assert attempt.calls == 201
    assert max(fake.sleeps) <= 15.0 * 1.3


async def test_cancellation_during_backoff_sleep_propagates() -> None:
    attempt = Script(*[ConnectionClosed() for _ in range(5)])
    sleeping = asyncio.Event()

    async def long_sleep(delay: float) -> None:
        sleeping.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(retry(attempt, RetryConfig(), sleep=long_sleep))
    await sleeping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempt.calls == 1


async def test_cancellation_inside_an_attempt_is_not_retried() -> None:
    fake = FakeTime()
    attempt = Script(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await retry(attempt, RetryConfig(), sleep=fake.sleep)
    assert attempt.calls == 1 and fake.sleeps == []


async def test_retry_with_real_sleeps() -> None:
    """The one test on the real clock, with tiny intervals."""
    config = RetryConfig(initial_interval=0.001, max_interval=0.002)
    attempt = Script(ConnectionClosed(), TimeoutError())
    assert await retry(attempt, config) == "ok"
    assert attempt.calls == 3


async def test_pause_sleeps_the_next_delay_and_max_interval_once_the_time_is_spent():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    now = [0.0]
    config = RetryConfig(initial_interval=1.0, multiplier=2.0, max_interval=3.0,
                         randomization_factor=0.0, max_elapsed_time=2.5)
    backoff = Backoff(config, clock=lambda: now[0])
    await backoff.pause(sleep)  # 1.0: within the elapsed budget
    now[0] = 2.0
    await backoff.pause(sleep)  # 2.0 would end past 2.5: a loop that never gives up waits max
    assert slept == [1.0, 3.0]
