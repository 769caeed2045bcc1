"""Several keys at once: slots share the queue, and the technician's view names each slot."""

from __future__ import annotations

from rich.console import Console

from station.bench import LATENCY, bench_slots
from station.console import SlotBoard


def test_four_slots_finish_four_keys_in_about_the_time_of_one():
    # the modelled device latency (bench.LATENCY, our assumption) dominates each key's time, so
    # keys programmed side by side take little longer than one; one key in a row each would take 4x
    result = bench_slots(slots=4)
    assert result["one_key_s"] > sum(LATENCY.values())
    assert result["ratio"] < 2.0, result


def render(board: SlotBoard) -> str:
    console = Console(width=160, record=True)
    console.print(board.table())
    return console.export_text()


def test_the_slot_board_tells_which_key_to_touch_pull_or_reset():
    board = SlotBoard(3)
    board({"kind": "claimed", "slot": 1, "item": 1, "shipment": "0123456789", "model": "YubiKey 5 NFC (5.7)", "serial": "123"})
    board({"kind": "touch", "slot": 1, "item": 1, "device": "k"})
    board({"kind": "claimed", "slot": 2, "item": 2, "shipment": "abcdefghij", "model": "YubiKey 5 NFC (5.4)", "serial": "456"})
    board({"kind": "failed", "slot": 2, "item": 2, "error_code": "device_error", "message": "pulled out", "key_touched": True})
    board({"kind": "claimed", "slot": 3, "item": 3, "shipment": "x", "model": "m", "serial": "789"})
    board({"kind": "fulfilled", "slot": 3, "item": 3})
    board({"kind": "remove_key", "slot": 3, "device": "k"})
    text = render(board)
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│")}
    assert "TOUCH THE KEY" in lines["1"] and "01234567" in lines["1"] and "123" in lines["1"]
    assert "device_error" in lines["2"] and "reset the key" in lines["2"]
    assert "REMOVE THE KEY" in lines["3"] and "fulfilled" in lines["3"]
    assert "1 fulfilled, 1 failed" in text
