import base64
import secrets

import pytest
from structlog.testing import capture_logs

from graflow_runtime.signing import (
    KEY_ID_FIELD,
    SIGNATURE_FIELD,
    UNSIGNED,
    BusKeys,
    Kind,
    SigningKeysError,
)

OLD = secrets.token_bytes(32)
NEW = secrets.token_bytes(32)


def keys(*pairs: tuple[str, bytes], signing: str) -> BusKeys:
    return BusKeys(dict(pairs), signing)


def test_a_signed_message_verifies_and_any_changed_byte_or_field_does_not():
    bus = keys(("k1", OLD), signing="k1")
    data = b"\x08\x01envelope bytes"
    fields = bus.sign_fields(Kind.ENVELOPE, data)
    assert set(fields) == {KEY_ID_FIELD, SIGNATURE_FIELD} and fields[KEY_ID_FIELD] == b"k1"
    assert bus.fields_problem(Kind.ENVELOPE, data, fields) is None
    assert bus.fields_problem(Kind.ENVELOPE, data + b"x", fields).startswith("BadSignature: the HMAC")
    assert bus.fields_problem(Kind.ENVELOPE, data[:-1], fields).startswith("BadSignature")
    assert bus.fields_problem(Kind.ENVELOPE, data, {}).startswith("BadSignature: the message is not signed")
    other_key = keys(("k1", NEW), signing="k1").sign_fields(Kind.ENVELOPE, data)
    assert bus.fields_problem(Kind.ENVELOPE, data, other_key).startswith("BadSignature")
    assert bus.refused.by_kind == {"ENVELOPE": 4}


def test_one_kinds_signature_does_not_pass_for_another_kind():
    bus = keys(("k1", OLD), signing="k1")
    fields = bus.sign_fields(Kind.ENVELOPE, b"same bytes")
    assert bus.fields_problem(Kind.OUTCOME, b"same bytes", fields).startswith("BadSignature")


def test_the_key_id_is_part_of_the_mac():
    bus = keys(("a", OLD), ("b", OLD), signing="a")
    fields = bus.sign_fields(Kind.OUTCOME, b"data")
    relabeled = {**fields, KEY_ID_FIELD: b"b"}
    assert bus.fields_problem(Kind.OUTCOME, b"data", relabeled).startswith("BadSignature")


def test_rotation_old_key_messages_verify_while_both_keys_are_listed():
    old = keys(("old", OLD), signing="old")
    both = keys(("old", OLD), ("new", NEW), signing="new")
    new_only = keys(("new", NEW), signing="new")
    signed_old = old.sign_fields(Kind.OUTCOME, b"o")
    signed_new = both.sign_fields(Kind.OUTCOME, b"o")
    assert signed_new[KEY_ID_FIELD] == b"new"
    assert both.fields_problem(Kind.OUTCOME, b"o", signed_old) is None
    assert both.fields_problem(Kind.OUTCOME, b"o", signed_new) is None
    assert old.fields_problem(Kind.OUTCOME, b"o", signed_new).startswith("BadSignature: unknown key id")
    assert new_only.fields_problem(Kind.OUTCOME, b"o", signed_old).startswith("BadSignature: unknown key id")


def test_without_keys_nothing_is_signed_and_everything_is_accepted():
    assert not UNSIGNED.enabled
    assert UNSIGNED.sign_fields(Kind.ENVELOPE, b"x") == {}
    assert UNSIGNED.fields_problem(Kind.ENVELOPE, b"x", {}) is None


def test_a_refusal_is_logged_at_warning_with_the_count():
    bus = keys(("k1", OLD), signing="k1")
    with capture_logs() as logs:
        bus.fields_problem(Kind.ENVELOPE, b"x", {})
        bus.fields_problem(Kind.ENVELOPE, b"x", {})
    refused = [e for e in logs if e["event"] == "message refused: bad signature"]
    assert [e["log_level"] for e in refused] == ["warning", "warning"]
    assert [e["refused_total"] for e in refused] == [1, 2]


def test_settings_errors_name_the_variables_of_the_process():
    with pytest.raises(SigningKeysError, match=r"^GRAFLOW_WORKER_SIGNING_KEY_ID 'x' names none of the keys "
                                               r"of GRAFLOW_WORKER_SIGNING_KEYS \(a\)$"):
        BusKeys.from_settings([f"a:{OLD.hex()}"], "x", prefix="GRAFLOW_WORKER_")


def test_settings_take_hex_and_base64_secrets_and_default_to_the_only_key():
    from_hex = BusKeys.from_settings([f"k1:{OLD.hex()}"], "")
    from_b64 = BusKeys.from_settings([f"k1:{base64.b64encode(OLD).decode()}"], "k1")
    assert from_hex.signing_key_id == "k1"
    fields = from_hex.sign_fields(Kind.ENVELOPE, b"m")
    assert from_b64.fields_problem(Kind.ENVELOPE, b"m", fields) is None
    assert not BusKeys.from_settings([], "").enabled


@pytest.mark.parametrize(
    ("entries", "key_id", "message"),
    [
        ([f"k1{OLD.hex()}"], "", "SIGNING_KEYS[0]: expected '<key id>:<secret>'"),
        ([f"bad id:{OLD.hex()}"], "", "SIGNING_KEYS[0]: expected"),
        (["k1:abcd"], "", "SIGNING_KEYS[0] (k1): the secret is 2 bytes; at least 32"),
        (["k1:not base64 !"], "", "neither hex nor base64"),
        ([f"k1:{OLD.hex()}", f"k1:{NEW.hex()}"], "k1", "SIGNING_KEYS[1]: key id 'k1' is listed twice"),
        ([f"a:{OLD.hex()}", f"b:{NEW.hex()}"], "", "SIGNING_KEY_ID is empty"),
        ([f"a:{OLD.hex()}"], "c", "SIGNING_KEY_ID 'c' names none of the keys of SIGNING_KEYS (a)"),
        ([], "a", "SIGNING_KEY_ID is set but SIGNING_KEYS is empty"),
    ],
)
def test_unusable_signing_settings_are_refused_naming_the_setting_and_never_the_secret(
    entries, key_id, message
):
    with pytest.raises(SigningKeysError) as raised:
        BusKeys.from_settings(entries, key_id)
    assert message in str(raised.value)
    assert OLD.hex() not in str(raised.value) and NEW.hex() not in str(raised.value)


def test_the_start_up_line_says_whether_the_bus_is_signed():
    with capture_logs() as logs:
        UNSIGNED.log_mode("worker")
        keys(("k1", OLD), ("k2", NEW), signing="k2").log_mode("scheduler")
    unsigned, signed = logs
    assert (unsigned["log_level"], unsigned["service"]) == ("warning", "worker")
    assert unsigned["event"].startswith("bus messages are NOT signed")
    assert (signed["log_level"], signed["event"]) == ("info", "bus messages are signed and verified")
    assert (signed["signing_key_id"], signed["key_ids"]) == ("k2", ["k1", "k2"])
    assert OLD.hex() not in str(signed) and NEW.hex() not in str(signed)
