"""What the station shows a technician (rich), kept out of cli.py so commands stay one-liners."""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.table import Table

from station.device.discovery import Device

#: Messages are never folded at 80 columns when stderr is a log or a pipe (soft wrap: the
#: terminal, if any, wraps them).
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False)


def print_table(table, console: Console | None = None) -> None:
    """A table on stdout: at the terminal's width on a terminal; in a pipe or a file at its
    natural width, so no cell is folded into 80 columns (rich's default for a file)."""
    if console is None:
        console = out_console if out_console.is_terminal else Console(highlight=False, width=10_000)
    console.print(table)


def touch_prompt(device: Device) -> None:
    """Printed when a key waits for user presence (CTAPHID keepalive UPNEEDED)."""
    err_console.print(f"[bold yellow]Touch the key[/] {device.label}")


def devices_table(devices: list[Device]) -> Table:
    table = Table(title=f"{len(devices)} authenticator(s)")
    for column in ("transport", "path", "model", "AAGUID", "firmware", "serial", "PIN", "CTAP", "force PIN change"):
        table.add_column(column)
    for d in devices:
        serial = d.identity.serial or f"[dim]none ({d.identity.serial_note})[/]"
        table.add_row(
            d.transport, d.path, d.model, str(d.aaguid), d.identity.firmware or "?", serial,
            "set" if d.pin_set else "none", ", ".join(d.versions), "yes" if d.can_force_pin_change else "no",
        )
    return table


def print_devices(devices: list[Device], *, as_json: bool, busy=(), refused=()) -> None:
    """The keys `station devices` opened; `busy` (candidates a slot or process holds, never
    opened) and `refused` ((candidate, StationError): opened, not usable) follow them."""
    if as_json:
        rows = [d.as_json() for d in devices]
        rows += [{"spec": c.spec, "transport": c.transport, "path": c.path, "in_use": True} for c in busy]
        rows += [{"spec": c.spec, "transport": c.transport, "path": c.path, "error_code": e.code,
                  "error_message": e.message} for c, e in refused]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if devices:
        print_table(devices_table(devices))
    for c in busy:
        out_console.print(f"[dim]{c.transport} {c.path}: in use by a station slot (not opened)[/]")
    for c, e in refused:
        out_console.print(f"[red]{c.transport} {c.path}: {e.code}[/] {e.message}")
    if not (devices or busy or refused):
        out_console.print("No authenticator attached. Insert a key (USB) or place a card on a PC/SC reader.")


def item_line(report) -> None:
    """One line per fulfilled or failed shipment item."""
    if report.ok:
        err_console.print(f"[green]item {report.index + 1}: fulfilled[/] on {report.device}")
        return
    err_console.print(f"[bold red]item {report.index + 1}: {report.error_code}[/] {report.error_message}")
    if report.key_touched:
        err_console.print(f"[red]  that key was written to: reset it (station reset) before reuse, or set it aside[/]")


_EVENT_TEXT = {
    "waiting_key": "[dim]slot {slot}: waiting for a key[/]",
    "queue_empty": "[dim]slot {slot}: the queue is empty[/]",
    "claimed": "slot {slot}: item {item} of shipment {shipment} on {model} #{serial}",
    "touch": "[bold yellow]slot {slot}: touch the key[/] {device}",
    "fulfilled": "[green]slot {slot}: item {item} fulfilled[/] ({elapsed} s)",
    "failed": "[bold red]slot {slot}: item {item} failed: {error_code}[/] {message}",
    "remove_key": "[bold]slot {slot}: remove the key[/] {device}{what}",
    "key_fault": "[bold red]slot {slot}: {error_code}[/] {message} (item {item} {item_fate})",
    "key_refused": "[bold red]slot {slot}: {error_code}[/] {message}",
    "stale": "[bold red]slot {slot}: item {item}: {message}[/]",
    "lost_lease": "[yellow]slot {slot}: {message}[/]",
    "slot_restarted": "[bold red]{message}[/]",
    "not_fresh": "[bold red]slot {slot}: {message}[/] (item {item} went back to the queue)",
    "abandoned": "[yellow]slot {slot}: item {item} given back untouched[/]",
    "interrupted_key": "[bold red]{message}[/]",
    "resubmitted": "item {item}: sealed result from before a restart resubmitted",
    "service_error": "[red]service: {message}[/]",
    "conflict": "[red]item {item}: the service holds another result ({message})[/]",
    "stopping": "[yellow]{signal}: finishing the current item, then stopping[/]",
    "fatal": "[bold red]slot {slot}: {message}[/]",
}


def event_printer(*, as_json: bool):
    """The daemon's events as readable lines on stderr, or JSON lines on stdout (`--json`)."""

    def show(event: dict) -> None:
        if as_json:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            sys.stdout.flush()
            return
        template = _EVENT_TEXT.get(event.get("kind"))
        if template:
            fields = _Defaults({k: ("" if v is None else v) for k, v in event.items()})
            fields["what"] = f": {REMOVE_TEXT[event['action']]}" if event.get("action") in REMOVE_TEXT else ""
            fields["item_fate"] = ("failed: no key could do it" if event.get("item_state") == "failed"
                                   else "went back to the queue for another key")
            text = template.format_map(fields)
            if event.get("key_touched"):
                text += " [red]— that key was written to: reset it before reuse[/]"
            err_console.print(text)

    return show


#: What a technician does with the key a slot asks to be removed, by the outcome's action.
REMOVE_TEXT = {
    "ship": "ship it",
    "reset": "reset it (station reset) before reuse",
    "set_aside": "set it aside, do not use it for orders",
    "unplug": "it stopped answering: unplug it, reset it before reuse",
    "reuse": "nothing was written to it: it can be used again",
    "do_not_ship": "DO NOT SHIP it: reset it (station reset)",
}


class _Defaults(dict):
    def __missing__(self, key):
        return ""


def demo_table(rows, *, title: str = "Pre-registered keys") -> Table:
    """The demo's live view and final table: one row per ordered key (never a PIN)."""
    table = Table(title=title)
    for column in ("#", "IdP", "user", "shipment", "state", "model", "serial", "verified", "signed in"):
        table.add_column(column, no_wrap=column in ("#", "shipment", "serial", "verified", "signed in"),
                         overflow="fold")
    for r in rows:
        state = f"[red]{r.state}[/]" if r.error else r.state
        table.add_row(str(r.number), r.idp, r.user, r.shipment[:8], state, r.model, r.serial,
                      "[green]yes[/]" if r.verified else "[red]no[/]", "[green]yes[/]" if r.signed_in else "[red]no[/]")
    return table


def print_mailed_pins(rows) -> None:
    """`--show-pins`: what the PIN mailer would send, one line per user (asked for explicitly)."""
    out_console.print("PINs (mailed to each user separately from the key):")
    for r in rows:
        if r.pin is not None:
            out_console.print(f"  {r.user}  {r.pin.reveal()}", soft_wrap=True)


def run_demo_live(opts, *, show_pins: bool) -> bool:
    """Run the demo with a live table on stderr, then print the final table and any errors."""
    from rich.live import Live

    from station.demo import run_demo

    if getattr(opts, "directory", None):
        err_console.print(f"[bold]station demo --directory {opts.directory}[/]: a group of {opts.keys} users enrolled "
                          "by the service in the customer's directory, keys programmed, registered there, then used "
                          "to sign in.")
    else:
        err_console.print(f"[bold]station demo[/]: {opts.keys} keys ordered for Okta, Entra ID and PingOne users, "
                          f"programmed over {opts.transport}, verified, then used to sign in.")
    with Live(console=err_console, refresh_per_second=8, transient=True) as live:
        result = run_demo(opts, on_update=lambda rows: live.update(demo_table(rows)))
    print_table(demo_table(result.rows, title=f"Pre-registered keys ({len(result.rows)} in {result.seconds:.1f} s)"))
    if show_pins:
        print_mailed_pins(result.rows)
    for r in result.rows:
        if r.error:
            err_console.print(f"[red]key {r.number} ({r.user}): {r.error}[/]")
        elif getattr(r, "signin_skipped", ""):
            err_console.print(f"[yellow]key {r.number} ({r.user}): sign-in not tried here: {r.signin_skipped}[/]")
    if result.ok and any(getattr(r, "signin_skipped", "") for r in result.rows):
        err_console.print("[green]every key was verified as genuine and registered; the others were used to sign in[/]")
    elif result.ok:
        err_console.print("[green]every key was verified as genuine, registered, and used to sign in after the forced PIN change[/]")
    return result.ok


def bench_table(results: dict):
    """`station bench`'s figures as one table: each figure, its value, its goal, whether it is met
    and the figure when issue 18 was filed ("at start")."""
    targets = results.get("targets", {})
    start = results.get("issue_start", {})
    table = Table(title="station bench")
    for column in ("figure", "value", "goal", "met", "at start", "note"):
        table.add_column(column, overflow="fold")

    def row(figure: str, value: str, goal: str = "", met: bool | None = None, note: str = "", was: str = "") -> None:
        verdict = "" if met is None else ("[green]yes[/]" if met else "[red]no[/]")
        table.add_row(figure, value, goal, verdict, was, note)

    cpu = results["item_cpu"]
    row("station CPU per item (1 PIN + 2 credentials), virtual key excluded", f"{cpu['station_cpu_ms']:.1f} ms",
        note=f"with the virtual key's own work: {cpu.get('with_key_cpu_ms', 0):.1f} ms")
    row("crypto floor, P-384 (JOSE)", f"{cpu['p384_floor_ms']:.1f} ms",
        note=f"6 ECDH {cpu['ecdh_ms']:.2f}, 3 keygen {cpu['keygen_ms']:.2f}, 3 ES384 {cpu['es384_ms']:.2f} ms each")
    row("crypto floor, P-256 (PIN/UV protocol)", f"{cpu['p256_floor_ms']:.1f} ms",
        note=f"{cpu['pin_exchanges']:.0f} exchanges × (keygen {cpu['p256_keygen_ms']:.2f} + ECDH {cpu['p256_ecdh_ms']:.2f} ms)")
    goal = targets.get("item_cpu_ratio", cpu["target_ratio"])
    row("item CPU ÷ full floor", f"{cpu['ratio']:.2f}×", f"≤ {goal}×", cpu["ratio"] <= goal,
        f"floor {cpu['floor_ms']:.1f} ms", start.get("item_cpu_ratio", ""))
    if "commands_per_item" in cpu:
        commands = ", ".join(f"{name} {n:g}" for name, n in cpu["commands_per_item"].items())
        row("getInfo read per item", f"{cpu['getinfo_per_item']:g}", note=f"CTAP commands per item: {commands}",
            was=start.get("getinfo_per_item", ""))
    if cpu.get("step_cpu_ms"):
        steps = ", ".join(f"{name} {ms:.1f}" for name, ms in cpu["step_cpu_ms"].items())
        row("station CPU by step (ms, virtual key excluded)", f"{sum(cpu['step_cpu_ms'].values()):.1f} ms", note=steps)
    proto = results["protocol"]
    row("open_request / seal_response", f"{proto['open_request_us']:.0f} / {proto['seal_response_us']:.0f} µs",
        note=f"ECDH {proto['p384_ecdh_us']:.0f} µs, ES384 {proto['es384_sign_us']:.0f} µs")
    goal = targets.get("virtual_mc_per_s")
    for transport, rates in results["virtual"]["ops_per_second"].items():
        direct = transport == "direct" and goal is not None
        row(f"virtual key over {transport}", f"{rates['makeCredential']:.0f} mc/s, {rates['getAssertion']:.0f} ga/s",
            f"≥ {goal:.0f} mc/s" if direct else "", rates["makeCredential"] >= goal if direct else None,
            was=start.get("virtual_mc_per_s", "") if direct else "")
    trip = results["round_trip"]
    goal = targets.get("round_trip_keys_per_s")
    row("round trip on one core", f"{trip['keys_per_second']:.1f} keys/s", f"≥ {goal:.0f} keys/s" if goal else "",
        trip["keys_per_second"] >= goal if goal else None, f"{trip['keys']} keys in {trip['seconds']:.2f} s",
        start.get("round_trip_keys_per_s", ""))
    if "cpu_s" in trip:  # perf-service: the CPU behind it, and where it goes
        cpu_per_key = trip["cpu_s"] / trip["keys"] * 1000
        row("round trip CPU per key", f"{cpu_per_key:.0f} ms", note=f"{1000 / cpu_per_key:.1f} keys per CPU-second "
            "(the wall figure also counts the other processes on this core)")
    for part, spent in (trip.get("breakdown") or {}).get("parts", {}).items():
        libraries = ", ".join(f"{lib} {ms:.1f}" for lib, ms in list(spent["libraries_ms_per_key"].items())[:3])
        row(f"  round trip: {part}", f"{spent['ms_per_key']:.1f} ms/key", note=f"{spent['share']:.0%}; {libraries}")
    slots = results["slots"]
    goal = targets.get("slots_ratio", slots["target_ratio"])
    row(f"{slots['slots']} slots ÷ one key (modelled latency)", f"{slots['ratio']:.2f}×", f"≤ {goal}×",
        slots["ratio"] <= goal, f"{slots['all_keys_s']:.2f} s vs {slots['one_key_s']:.2f} s", start.get("slots_ratio", ""))
    queue = results["queue"]
    if "sqlite" in queue:
        q = queue["sqlite"]
        row(f"claim+submit, {q['clients']} station clients (sqlite)", f"{q['claim_submit_per_s']:.0f} /s",
            note=("queue drained early: a floor; " if q["drained"] else "")
            + f"claim p50 {q['claim_ms_p50']:.2f} ms, p99 {q['claim_ms_p99']:.2f} ms")
    goal = targets.get("queue_vs_pgbench", 0.5)
    for index, (clients, cmp) in enumerate(queue.get("postgresql", {}).items()):
        row(f"claim+submit ÷ pgbench, {clients} clients (postgresql, median of {cmp['runs']})",
            f"{cmp['median_ratio']:.3f}", f"≥ {goal}" if index == 0 else "", cmp["median_ratio"] >= goal if index == 0 else None,
            f"spread {cmp['min_ratio']:.3f}–{cmp['max_ratio']:.3f}; {cmp['median_claim_submit_per_s']:.0f} /s vs "
            f"{cmp['median_pgbench_tps']:.0f} tps; claim p50 {cmp['claim_ms_p50']:.2f} ms, p99 {cmp['claim_ms_p99']:.2f} ms",
            start.get("queue_vs_pgbench", "") if index == 0 else "")
    return table


def print_bench(results: dict, console: Console | None = None) -> None:
    """`station bench`: the table, the same on a terminal and in a pipe. A pipe gets no 80-column
    wrapping (rich's default width for a file): the table is printed at its natural width."""
    print_table(bench_table(results), console)


class SlotBoard:
    """`station run` on a terminal: a live table, one row per slot, that tells the technician
    what each key is doing and what to do next (touch it, pull it, reset it). Events that are
    not about one slot's progress (restarts, service trouble) print above the table."""

    STEP_TEXT = {
        "opened": "requests opened", "preflight": "checked", "pin_set": "PIN set", "credential": "credential made",
        "configured": "PIN change forced", "verified": "attestation verified", "sealed": "responses sealed",
    }

    def __init__(self, slots: int) -> None:
        from rich.live import Live

        self.rows = {n: {"model": "", "serial": "", "shipment": "", "step": "starting", "outcome": "",
                         "started": None, "alert": False} for n in range(1, slots + 1)}
        self.finished = {"fulfilled": 0, "failed": 0}
        self.live = Live(console=err_console, get_renderable=self.table, refresh_per_second=4)
        self._lines = event_printer(as_json=False)

    def __enter__(self) -> SlotBoard:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def __call__(self, event: dict) -> None:
        kind, slot = event.get("kind"), event.get("slot")
        row = self.rows.get(slot)
        if row is None:  # not about one slot: a line above the table
            self._lines(event)
            return
        if kind == "waiting_key":
            row.update(step="waiting for a key", started=None, alert=False)
        elif kind == "queue_empty":
            row.update(step="queue empty: waiting for orders")
        elif kind == "claimed":
            row.update(model=event.get("model") or "", serial=event.get("serial") or "", shipment=(event.get("shipment") or "")[:8],
                       step="claimed", outcome="", started=time.monotonic(), alert=False)
        elif kind == "step":
            row["step"] = self.STEP_TEXT.get(event.get("step"), event.get("step"))
        elif kind == "touch":
            row.update(step="[bold yellow]TOUCH THE KEY[/]", alert=True)
        elif kind == "fulfilled":
            self.finished["fulfilled"] += 1
            row.update(outcome="[green]fulfilled[/]", alert=False)
        elif kind == "failed":
            self.finished["failed"] += 1
            reset = " — reset the key" if event.get("key_touched") else ""
            row.update(outcome=f"[bold red]{event.get('error_code')}{reset}[/]", alert=True)
            self._lines(event)
        elif kind == "not_fresh":
            row.update(outcome="[bold red]not fresh — reset the key[/]", alert=True)
        elif kind == "remove_key":
            what = REMOVE_TEXT.get(event.get("action") or "", "")
            row["step"] = f"[bold]REMOVE THE KEY[/]{': ' + what if what else ''}"
        elif kind in ("key_fault", "key_refused", "stale"):
            what = "DO NOT SHIP — reset the key" if kind == "stale" else f"{event.get('error_code')}"
            row.update(outcome=f"[bold red]{what}[/]", alert=True)
            self._lines(event)
        elif kind == "abandoned":
            row.update(step="given back untouched", outcome="")
        else:
            self._lines(event)

    def table(self) -> Table:
        done = self.finished
        table = Table(title=f"station run — {done['fulfilled']} fulfilled, {done['failed']} failed")
        for column in ("slot", "model", "serial", "shipment", "step", "elapsed", "outcome"):
            table.add_column(column, no_wrap=column in ("slot", "serial", "shipment", "elapsed"))
        for n, row in self.rows.items():
            elapsed = f"{time.monotonic() - row['started']:.1f} s" if row["started"] else ""
            table.add_row(str(n), row["model"], row["serial"], row["shipment"], row["step"], elapsed, row["outcome"],
                          style="on dark_red" if row["alert"] and "red" in row["outcome"] else None)
        return table


def run_events(*, as_json: bool, slots: int):
    """The right view of the daemon's events: JSON lines, a live slot table on a terminal, or
    plain lines (a service's journal). A context manager yielding the event callback."""
    from contextlib import nullcontext

    if as_json or not err_console.is_terminal:
        return nullcontext(event_printer(as_json=as_json))
    return SlotBoard(slots)
