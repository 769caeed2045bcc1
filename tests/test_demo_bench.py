"""The round trip's CPU breakdown (station/demo_bench.py): which part a stack is charged to.
Behaviour only: no timing is asserted."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from station.demo_bench import CpuBreakdown, _part_of, summarise


def stack(*frames: tuple[str, str]):
    """A fake stack, outermost first: (file, function) pairs → its innermost frame."""
    frame = None
    for path, name in frames:
        frame = SimpleNamespace(f_code=SimpleNamespace(co_filename=path, co_name=name), f_back=frame)
    return frame


def test_a_library_frame_counts_for_the_part_that_called_it():
    frame = stack(("/x/station/fulfillment/runner.py", "_slot"), ("/x/station/provision/item.py", "provision_item"),
                  ("/v/site-packages/jwcrypto/jwe.py", "encrypt"))
    assert _part_of(frame, "slot-1") == ("station", "JOSE")


def test_the_virtual_key_inside_the_station_is_the_virtual_key():
    frame = stack(("/x/station/provision/item.py", "provision_item"), ("/v/site-packages/fido2/ctap2/base.py", "send_cbor"),
                  ("/x/station/virtual/authenticator.py", "process"))
    assert _part_of(frame, "slot-1") == ("virtual key", "own code")


def test_stand_in_functions_are_sign_in_or_verification():
    assertion = stack(("/x/station/standins/_common.py", "verify"), ("/x/station/standins/_common.py", "assertion"))
    register = stack(("/x/station/standins/graph.py", "post"), ("/x/station/standins/_common.py", "register"),
                     ("/v/site-packages/fido2/server.py", "register_complete"))
    own = stack(("/x/station/standins/okta.py", "enroll"))
    assert _part_of(assertion, "AnyIO worker thread")[0] == "sign-in"
    assert _part_of(register, "AnyIO worker thread") == ("verification", "fido2")
    assert _part_of(own, "AnyIO worker thread")[0] == "identity provider"


def test_a_stack_without_our_frames_is_charged_by_its_thread():
    frame = stack(("/v/site-packages/uvicorn/server.py", "run"), ("/v/site-packages/h11/_connection.py", "next_event"))
    assert _part_of(frame, "embedded-service") == ("service", "HTTP server")
    assert _part_of(frame, "standin") == ("identity provider", "HTTP server")
    assert _part_of(frame, "somebody") == ("other", "HTTP server")


def test_the_sampler_charges_a_busy_thread_and_summarises_per_key():
    stop = threading.Event()

    def spin():  # this file is none of the parts: its CPU is "other"
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin, name="busy")
    with CpuBreakdown(interval=0.002) as sampler:
        worker.start()
        while sampler.samples < 20:
            stop.wait(0.01)
        stop.set()
        worker.join()
    parts = sampler.parts()
    assert parts["other"]["own code"] > 0
    summary = summarise(parts, keys=2)
    assert summary["parts"]["other"]["ms_per_key"] > 0
    assert abs(sum(p["share"] for p in summary["parts"].values()) - 1) < 0.01
