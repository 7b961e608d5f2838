"""Fuzzing with structure (livepose.bench.fuzz), small: every receiver accounts for every
malformed message and no corrupt ring header crashes a reader. The benchmark runs ≥ 100 000
per kind (``livepose bench fuzz``); this keeps the harness and the receivers honest in CI."""

from __future__ import annotations

from livepose.bench.fuzz import fuzz_messages, fuzz_ring_headers, summarize


def test_every_malformed_message_is_counted_and_nothing_crashes() -> None:
    messages = fuzz_messages(1500, seed=1)
    rings = fuzz_ring_headers(400, seed=1)
    s = summarize(messages, rings)
    assert s["crashes"] == 0, {k: v for k, v in {**messages, **rings}.items()
                               if v.get("crashes")}
    assert s["fuzz_uncounted"] == 0
    assert s["fuzz_messages_per_kind_min"] == 1500
    for kind, c in messages.items():  # the mutations reach both outcomes: they are not trivial
        assert c.get("rejected", 0) > 0, kind
        assert c.get("handled", 0) + c.get("dropped", 0) > 0, kind
    assert rings["magic"]["rejected"] == 400  # a ring that is not one is never mapped
