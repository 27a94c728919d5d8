from app.domain.read_cache import ReadCache
from app.domain.users import Principal

ALICE = Principal("u1", "alice", False, {"rate_per_minute": 60})
BOB = Principal("u2", "bob", False, {"rate_per_minute": 60})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_for_its_time_to_live() -> None:
    clock = Clock()
    cache = ReadCache(5.0, clock=clock)
    cache.put("a", ALICE, cache.generation)
    clock.now += 4.9
    assert cache.get("a") is ALICE
    clock.now += 0.2
    assert cache.get("a") is None and len(cache) == 0


def test_what_was_read_before_a_change_is_never_stored() -> None:
    cache = ReadCache(5.0)
    cache.put("a", ALICE, cache.generation)
    generation = cache.generation  # a lookup starts reading the database ...
    cache.forget_all()  # ... a revoke commits meanwhile ...
    cache.put("b", BOB, generation)  # ... and what it read is stale
    assert cache.get("a") is None and cache.get("b") is None
    cache.put("b", BOB, cache.generation)
    assert cache.get("b") is BOB


def test_forget_all_is_a_notify_listener_and_the_cache_is_bounded() -> None:
    cache = ReadCache(5.0, max_entries=2)
    for digest in ("a", "b", "c"):
        cache.put(digest, ALICE, cache.generation)
    assert cache.get("a") is None and cache.get("c") is ALICE and len(cache) == 2
    cache.forget_all(object(), 123, "gateway_principals", "")
    assert len(cache) == 0


def test_a_zero_time_to_live_keeps_nothing() -> None:
    cache = ReadCache(0.0)
    cache.put("a", ALICE, cache.generation)
    assert cache.get("a") is None
