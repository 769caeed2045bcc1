"""The customer side knows every state of PROTOCOL.md §4: it waits through 100 and 101, returns
on 102, 103, 104 (and 8, whose items carry their error codes) and stops on the error states."""

from __future__ import annotations

import pytest

from station.customer.orders import ShipmentFailed, ShipmentTimeout, wait_shipment


class Port:
    def __init__(self, states):
        self.states = list(states)
        self.polls = 0

    def get_shipment(self, shipment_id):
        self.polls += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"shipment_id": shipment_id, "shipment_state": {"shipment_state_id": state}}


def wait(port, timeout=5.0):
    clock = iter(range(10_000))
    return wait_shipment(port, "s-1", timeout=timeout, sleep=lambda _s: None, clock=lambda: next(clock))


@pytest.mark.parametrize("final", [102, 103, 104, 8])
def test_readable_states_end_the_wait(final):
    port = Port([100, 101, final])
    assert wait(port)["shipment_state"]["shipment_state_id"] == final
    assert port.polls == 3


@pytest.mark.parametrize("state, meaning", [(1, "incomplete shipping request"), (6, "incomplete"),
                                            (7, "address undeliverable"), (9, "denied-party"),
                                            (99, "shipping error"), (105, "lost"), (106, "delivery exception")])
def test_error_states_stop_the_wait_with_their_meaning(state, meaning):
    port = Port([100, state])
    with pytest.raises(ShipmentFailed, match=meaning) as raised:
        wait(port)
    assert str(raised.value).startswith("shipment_failed: shipment s-1") and f"state {state}" in str(raised.value)
    assert port.polls == 2


def test_a_shipment_that_stays_queued_times_out():
    with pytest.raises(ShipmentTimeout, match="still in state 101"):
        wait(Port([100, 101]), timeout=3)
