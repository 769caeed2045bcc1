#!/usr/bin/env python3
"""Secret scan (issue 8, item 4): is any PIN written anywhere a run left files?

    printf '%s\\n' "$PIN1" "$PIN2" | .venv/bin/python scripts/secret_scan.py DIR_OR_FILE...

The PINs come on stdin, one per line, never on the command line (argv is visible to every user
of the machine). Every file under the given folders is read as bytes (SQLite databases and their
-wal/-journal files, journals, logs, temporary files) and searched for each PIN:

- `plain`:  the digits in ASCII/UTF-8, not part of a longer run of digits (a PIN inside a
            timestamp or a serial number is a coincidence, not a leak);
- `utf16`:  the same in UTF-16-LE and UTF-16-BE;
- `json-number`: the PIN as a JSON number (leading zeros dropped: "012345" → 12345) after a
            `:`, `[` or `,`.

Findings name the file, the byte offset, the form and the PIN's position on stdin (#1, #2, ...),
never the PIN. Exit status: 0 nothing found, 1 findings, 2 usage error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: Files larger than this are read in chunks with an overlap, so a match across a boundary counts.
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """One occurrence of a PIN (named by its position on stdin, from 1) in a file."""

    path: Path
    offset: int
    form: str
    pin_index: int

    def __str__(self) -> str:
        return f"{self.path}:{self.offset}: PIN #{self.pin_index} ({self.form})"


def patterns(pin: str) -> list[tuple[str, re.Pattern[bytes]]]:
    """The byte patterns of one PIN, each with the name of its form."""
    if not pin.isascii() or not pin.isdigit():
        raise ValueError("a PIN is made of ASCII digits")  # the value is not echoed
    not_digit = b"(?![0-9])"
    forms = [("plain", rb"(?<![0-9])" + re.escape(pin.encode()) + not_digit)]
    for name, codec in (("utf16-le", "utf-16-le"), ("utf16-be", "utf-16-be")):
        unit_digit = b"(?:" + b"|".join(re.escape(c.encode(codec)) for c in "0123456789") + b")"
        encoded = re.escape(pin.encode(codec))
        forms.append((name, b"(?<!" + unit_digit + b")" + encoded + b"(?!" + unit_digit + b")"))
    number = str(int(pin)).encode()
    forms.append(("json-number", rb"[:\[,]\s*" + re.escape(number) + not_digit + rb"(?!\.[0-9])"))
    return [(name, re.compile(pattern)) for name, pattern in forms]


def files_under(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file at or under `paths` (symbolic links are not followed)."""
    for path in paths:
        if path.is_symlink():
            continue
        if path.is_file():
            yield path
        elif path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not child.is_symlink():
                    yield child


def _chunks(path: Path, overlap: int) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        start, carry = 0, b""
        while True:
            block = f.read(CHUNK_BYTES)
            if not block:
                return
            yield start - len(carry), carry + block
            start += len(block)
            carry = block[-overlap:]


def scan(paths: Iterable[Path], pins: Iterable[str]) -> list[Finding]:
    """Every occurrence of every PIN in every file under `paths`."""
    compiled = [(index, form, pattern) for index, pin in enumerate(pins, 1) for form, pattern in patterns(pin)]
    overlap = 256
    findings: set[Finding] = set()
    for path in files_under(Path(p) for p in paths):
        try:
            for base, data in _chunks(path, overlap):
                for index, form, pattern in compiled:
                    for match in pattern.finditer(data):
                        findings.add(Finding(path, base + match.start(), form, index))
        except OSError as exc:
            print(f"secret_scan: cannot read {path}: {exc.strerror}", file=sys.stderr)
    return sorted(findings, key=lambda f: (str(f.path), f.offset, f.form))


def read_pins(stream) -> list[str]:
    """One PIN per non-empty line of `stream`."""
    return [line.strip() for line in stream if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="folders and files to scan")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"secret_scan: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        pins = read_pins(sys.stdin)
        findings = scan(args.paths, pins)
    except ValueError as exc:
        print(f"secret_scan: {exc} (one PIN per line on stdin)", file=sys.stderr)
        return 2
    if not pins:
        print("secret_scan: no PIN on stdin: nothing to look for", file=sys.stderr)
        return 2
    for finding in findings:
        print(finding)
    files = sum(1 for _ in files_under(args.paths))
    print(f"{len(pins)} PINs, {files} files, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
