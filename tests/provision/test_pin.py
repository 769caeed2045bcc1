import logging
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.provision.pin import Pin, draw_pin, is_weak


@pytest.mark.parametrize("digits", ["0000", "999999", "0123", "123456", "6543210", "9876"])
def test_weak_shapes_are_recognised(digits):
    assert is_weak(digits)


@pytest.mark.parametrize("digits", ["0124", "1212", "902183", "0987654312", "1357"])
def test_ordinary_pins_are_not_weak(digits):
    assert not is_weak(digits)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=4, max_value=63))
def test_draw_pin_gives_digits_of_the_length_and_never_a_weak_shape(length):
    pin = draw_pin(length)
    digits = pin.reveal()
    assert len(digits) == length and len(pin) == length
    assert digits.isdigit() and digits.isascii()
    assert not is_weak(digits)


def test_draw_pin_is_not_constant():
    assert len({draw_pin(6).reveal() for _ in range(50)}) > 40


@pytest.mark.parametrize("length", [3, 64, 0, -1])
def test_draw_pin_refuses_lengths_outside_the_protocol(length):
    with pytest.raises(ValueError):
        draw_pin(length)


def test_a_pin_never_shows_in_repr_str_format_logs_or_pickles(caplog):
    pin = Pin("482913")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("drew %s and %r, %s", pin, pin, f"{pin}")
    for text in (repr(pin), str(pin), f"{pin}", f"{pin!r}", "%s" % pin, caplog.text, repr([pin])):
        assert "482913" not in text
    with pytest.raises(TypeError):
        pickle.dumps(pin)


def test_a_pin_refuses_non_digits_without_echoing_them():
    with pytest.raises(ValueError) as info:
        Pin("12ab34")
    assert "12ab34" not in str(info.value)
