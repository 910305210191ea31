"""The SDK reads a refusal's Retry-After as untrusted input: a bounded number or None."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio._relay_client._handshake import MAX_RETRY_AFTER, retry_after_untrusted


def test_delay_seconds_are_read_and_capped():
    assert retry_after_untrusted((("retry-after", "7"),)) == 7.0
    assert retry_after_untrusted((("Retry-After", " 12 "),)) == 12.0
    assert retry_after_untrusted((("retry-after", "99999999999"),)) == MAX_RETRY_AFTER
    assert retry_after_untrusted(()) is None
    assert retry_after_untrusted((("retry-after", "1.5"),)) is None  # not delay-seconds
    assert retry_after_untrusted((("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT"),)) is None
    assert retry_after_untrusted((("retry-after", "-3"),)) is None
    assert retry_after_untrusted((("retry-after", "٣"),)) is None  # a non-ASCII digit
    assert retry_after_untrusted((("retry-after", "1"), ("retry-after", "2"))) is None


@given(st.lists(st.tuples(st.sampled_from(["retry-after", "x"]), st.text(max_size=30))))
def test_any_headers_give_none_or_a_bounded_wait(headers):
    wait = retry_after_untrusted(tuple(headers))
    assert wait is None or 0 <= wait <= MAX_RETRY_AFTER
