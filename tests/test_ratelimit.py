"""The rate and log budgets, under a Clock."""

from twisted.internet.task import Clock

from tangram_channel.ratelimit import LogThrottle, TokenBucket


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=10, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.1)  # one token back
    assert bucket.take() is True
    assert bucket.take() is False
    clock.advance(100)  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_bucket_spends_nothing_on_a_refused_cost() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=1, burst=5)
    assert bucket.take(4) is True
    assert bucket.take(2) is False
    assert bucket.take(1) is True


def test_a_zero_rate_bucket_never_refuses() -> None:
    bucket = TokenBucket(Clock(), rate=0, burst=0)
    assert all(bucket.take() for _ in range(1000))


def test_log_throttle_lets_one_line_per_kind_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    throttle = LogThrottle(clock, interval=60)
    assert throttle.allow("frame") == 0
    assert throttle.allow("frame") is None
    assert throttle.allow("frame") is None
    assert throttle.allow("join") == 0  # kinds are independent
    clock.advance(59.9)
    assert throttle.allow("frame") is None
    clock.advance(0.1)
    assert throttle.allow("frame") == 3  # the three dropped since the last line
    assert throttle.allow("frame") is None


def test_charge_spends_past_the_bucket_and_says_how_long_the_debt_lasts() -> None:
    clock = Clock()
    bucket = TokenBucket(clock, rate=100, burst=100)
    assert bucket.charge(60) == 0.0
    assert bucket.charge(90) == 0.5  # 50 in debt at 100 a second
    clock.advance(0.5)
    assert bucket.charge(0) == 0.0
    assert bucket.take(1) is False  # paid back, nothing more yet
    assert TokenBucket(clock, rate=0, burst=0).charge(10**9) == 0.0
