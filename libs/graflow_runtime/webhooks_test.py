"""The webhook signature: what a receiver gets from strangers' headers never raises, an empty
secret is refused, and only the exact digits that were signed verify."""

from __future__ import annotations

import pytest

from graflow_runtime.webhooks import sign, verify_signature

SECRET = "s3cret"
BODY = b'{"graflow":{}}'
NOW = 1_700_000_000


def test_a_signature_verifies_with_the_timestamp_as_a_header_or_as_an_int() -> None:
    signature = sign(SECRET, NOW, BODY)
    assert verify_signature(SECRET, str(NOW), BODY, signature, now=NOW)
    assert verify_signature(SECRET, NOW, BODY, signature, now=NOW)
    assert verify_signature(SECRET.encode(), str(NOW), BODY, signature, now=NOW)


@pytest.mark.parametrize("signature", ["v1=é", "v1=\u2603,v1=00", "v1=\ud800", "\x00"])
def test_a_non_ascii_signature_header_is_false_not_an_exception(signature: str) -> None:
    assert not verify_signature(SECRET, str(NOW), BODY, signature, now=NOW)


def test_a_non_ascii_header_next_to_the_right_signature_still_verifies() -> None:
    assert verify_signature(SECRET, str(NOW), BODY, f"v1=é,{sign(SECRET, NOW, BODY)}", now=NOW)


@pytest.mark.parametrize(
    "timestamp", [f" {NOW}", f"0{NOW}", "1_700_000_000", f"+{NOW}", f"{NOW}\n", "١٧٠٠٠٠٠٠٠٠", "", "-1"]
)
def test_only_the_digits_that_were_signed_verify(timestamp: str) -> None:
    # Each would parse to the same int (or a number); the receiver must check what was signed.
    assert not verify_signature(SECRET, timestamp, BODY, sign(SECRET, NOW, BODY), now=NOW)


def test_a_timestamp_signed_with_leading_zeros_is_signed_as_given() -> None:
    assert sign(SECRET, f"0{NOW}", BODY) != sign(SECRET, NOW, BODY)


@pytest.mark.parametrize("secret", ["", b""])
def test_an_empty_secret_is_a_configuration_error(secret: str | bytes) -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        verify_signature(secret, str(NOW), BODY, sign(SECRET, NOW, BODY), now=NOW)
    with pytest.raises(ValueError, match="secret is empty"):
        sign(secret, NOW, BODY)


def test_signing_refuses_a_timestamp_that_is_not_digits() -> None:
    with pytest.raises(ValueError, match="ASCII digits"):
        sign(SECRET, "soon", BODY)
