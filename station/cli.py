"""The `station` command line (shared/CLI.md). Click commands only: parse, call one function, print.

Every failure prints one line `error_code: message` on stderr and exits non-zero.
"""

from __future__ import annotations

import functools
import sys

import click

from station.errors import StationError


def fail_cleanly(func):
    """Turn a StationError into the one-line `code: message` and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StationError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fido-preregistration-station", prog_name="station")
def cli() -> None:
    """FIDO pre-registration provisioning station."""


# ---------------------------------------------------------------- keys, inspect (protocol)
@cli.group()
def keys() -> None:
    """The key store: transport and signing keys (PROTOCOL.md §1)."""


# ---------------------------------------------------------------- virtual authenticator
@cli.group()
def virtual() -> None:
    """The virtual CTAP 2.1 authenticator used by CI and demos instead of hardware."""


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was half-written; run the command again", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
