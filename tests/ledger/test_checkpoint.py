"""Checkpoints and keys round-trip both ways; every malformed form is one clear FormatError."""
import pytest

from verifier.format import (
    ANCHOR_ORIGIN, CHECKPOINT_ORIGIN, Checkpoint, FormatError, parse_checkpoints, public_key_from_text,
    public_key_to_text,
)

CP = Checkpoint(CHECKPOINT_ORIGIN, "lid", 7, bytes(range(32)), 123, "0123456789abcdef", bytes(64))


def test_round_trip_text_object_text():
    text = CP.to_text()
    again = Checkpoint.from_text(text)
    assert again == CP
    assert again.to_text() == text
    assert parse_checkpoints(text + "\n" + text) == [CP, CP]


def test_anchor_origin_round_trips():
    a = Checkpoint(ANCHOR_ORIGIN, "lid", 3, bytes(32), 1, "0" * 16, bytes(64))
    assert Checkpoint.from_text(a.to_text()) == a


@pytest.mark.parametrize("mutate", [
    lambda t: "",
    lambda t: t.replace("seq: 7", "seq: seven"),
    lambda t: t.replace("seq: 7", "seq: -7"),
    lambda t: t.replace("seq: 7", "seq: 07"),
    lambda t: t.replace(CHECKPOINT_ORIGIN, "something/else"),
    lambda t: t.replace("hash: 00", "hash: zz"),
    lambda t: t.replace("hash: 00", "hash: "),
    lambda t: t.replace("sig: ", "sig: !!"),
    lambda t: t.replace("key: ", "key: x"),
    lambda t: t.replace("ledger: ", "ledgr: "),
    lambda t: "\n".join(t.split("\n")[:-2]),
    lambda t: t + "extra: line\n",
    lambda t: "\x00\xff" * 40,
])
def test_malformed_checkpoints_raise_one_error_family(mutate):
    with pytest.raises(FormatError, match="^malformed checkpoint"):
        parse_checkpoints(mutate(CP.to_text()))


def test_public_key_round_trip_and_errors():
    raw = bytes(range(32))
    assert public_key_from_text(public_key_to_text(raw)) == raw
    for bad in ("", "ed25519:", "ed25519:AAAA", "rsa:" + public_key_to_text(raw)[8:], "ed25519:###"):
        with pytest.raises(FormatError, match="^malformed public key"):
            public_key_from_text(bad)
