"""`station trust`: the counterfeit guard's trust store (shared/CLI.md, "Trust").

Registered from station/cli.py. Each command reads or changes the store `station run` uses:
`--trust DIR`, else STATION_RUN_TRUST_DIR, else `trust_dir` in [run] of the configuration file,
else the default under the user's data folder. A failure prints `trust: message` and exits 1.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click

from station.errors import DeviceError, StationError


class _CleanGroup(click.Group):
    """A StationError from any subcommand: one line `code: message` on stderr, exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StationError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)


def _store_options(func):
    func = click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                        help="TOML file whose [run] table may name trust_dir.")(func)
    return click.option("--trust", "trust_dir", type=click.Path(file_okay=False, path_type=Path),
                        help="The trust store folder (default: STATION_RUN_TRUST_DIR, [run] trust_dir, "
                             "else ~/.local/share/fido-station/trust).")(func)


def _folder(trust_dir: Path | None, config_file: Path | None) -> Path:
    from station.config import trust_dir_setting

    return trust_dir_setting(trust_dir, config_file)


@click.group("trust", cls=_CleanGroup)
def trust() -> None:
    """The counterfeit guard's trust store: anchors scoped to AAGUIDs, operator models, the MDS BLOB."""


@trust.command("import-mds")
@click.argument("blob", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mds-root", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM of the BLOB's signing root (default: the FIDO MDS root, GlobalSign Root CA - R3).")
@_store_options
def import_mds_command(blob: Path, mds_root: Path | None, trust_dir: Path | None, config_file: Path | None) -> None:
    """Verify a downloaded FIDO MDS3 BLOB (a JWT) and store it; prints its no and nextUpdate."""
    from station.trust.manage import import_mds

    folder = _folder(trust_dir, config_file)
    imported = import_mds(folder, blob, mds_root)
    click.echo(f"imported MDS BLOB no {imported.no}, nextUpdate {imported.next_update.isoformat()}: "
               f"{len(imported.by_aaguid)} FIDO2 entries, into {folder}")
    if imported.next_update < dt.date.today():
        click.echo(f"warning: its nextUpdate {imported.next_update.isoformat()} has passed: download the current BLOB",
                   err=True)


@trust.command("add-root")
@click.argument("pem", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--aaguid", "aaguids", multiple=True, help="An AAGUID this anchor may vouch for (repeat for more).")
@_store_options
def add_root_command(pem: Path, aaguids: tuple[str, ...], trust_dir: Path | None, config_file: Path | None) -> None:
    """Trust PEM (a CA root, or a model's self-signed attestation certificate) for exactly the given AAGUIDs."""
    from station.trust.manage import add_root

    added = add_root(_folder(trust_dir, config_file), pem, list(aaguids))
    what = "pinned attestation certificate" if added.kind == "pinned" else "root"
    click.echo(f"{added.id}\t{what} {added.subject}, vouches for {', '.join(map(str, added.aaguids))}")


@trust.command("add-model")
@click.argument("aaguid")
@click.option("--name", required=True, help="The model's name, as technicians should see it.")
@click.option("--vendor", required=True, help="Who makes it.")
@_store_options
def add_model_command(aaguid: str, name: str, vendor: str, trust_dir: Path | None, config_file: Path | None) -> None:
    """Catalogue a model your organisation buys that no vendor list names (it still needs an anchor)."""
    from station.trust.manage import add_model

    record = add_model(_folder(trust_dir, config_file), aaguid, name=name, vendor=vendor)
    click.echo(f"{record.aaguid}\t{record.name} ({record.vendor}); now give it an anchor: "
               f"station trust add-root PEM --aaguid {record.aaguid}")


@trust.command("remove")
@click.argument("ident", metavar="ID")
@_store_options
def remove_command(ident: str, trust_dir: Path | None, config_file: Path | None) -> None:
    """Remove an operator anchor (its ID), an operator model (its AAGUID), or the BLOB ("mds")."""
    from station.trust.manage import remove

    click.echo(remove(_folder(trust_dir, config_file), ident))


@trust.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_store_options
def list_command(as_json: bool, trust_dir: Path | None, config_file: Path | None) -> None:
    """Every anchor, the AAGUIDs it may vouch for and its source (shipped, mds, operator); operator models."""
    from station.trust.policy import Trust

    folder = _folder(trust_dir, config_file)
    model = Trust.default(trust_dir=folder)
    anchors = [_anchor_json(a, model) for a in model.anchors]
    models = [{"aaguid": str(m.aaguid), "name": m.name, "vendor": m.vendor}
              for m in model.models.values() if m.source == "operator"]
    mds = model.index.mds.model_dump(mode="json") if model.index.mds else None
    if as_json:
        click.echo(json.dumps({"trust_dir": str(folder), "mds": mds, "anchors": anchors, "models": models}, indent=2))
        return
    blob = f"MDS BLOB no {mds['no']}, nextUpdate {mds['next_update']}" if mds else "no MDS BLOB imported"
    click.echo(f"trust store {folder}: {len(model.index.anchors)} operator anchor(s), {len(models)} operator model(s); {blob}")
    click.echo(f"{'ID':<16}  {'SOURCE':<12}  {'KIND':<6}  {'VALID UNTIL':<10}  {'VOUCHES FOR':<28}  SUBJECT")
    for a in anchors:
        click.echo(f"{a['id']:<16}  {a['source']:<12}  {a['kind']:<6}  {a['not_after'][:10]:<10}  "
                   f"{a['vouches_for']:<28}  {a['subject']}")
    if models:
        click.echo("operator models:")
        for m in models:
            click.echo(f"  {m['aaguid']}  {m['name']} ({m['vendor']})")


def _anchor_json(anchor, model) -> dict:
    aaguids = sorted(str(a) for a in anchor.aaguids)
    vendors = sorted({model.models[a].vendor for a in anchor.aaguids if a in model.models})
    summary = aaguids[0] if len(aaguids) == 1 else f"{len(aaguids)} AAGUIDs ({', '.join(vendors)[:40]})"
    return {"id": anchor.id, "source": anchor.source, "kind": anchor.kind, "subject": anchor.subject,
            "not_after": anchor.certificate.not_valid_after_utc.isoformat(), "origin": anchor.origin,
            "aaguids": aaguids, "vouches_for": summary}


@trust.command("show")
@click.argument("aaguid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_store_options
def show_command(aaguid: str, as_json: bool, trust_dir: Path | None, config_file: Path | None) -> None:
    """What the station knows of one AAGUID: its model, MDS status, the anchors that may vouch for it,
    and whether a key of that model would be admitted."""
    from station.trust.manage import parse_aaguid
    from station.trust.policy import Trust

    key = parse_aaguid(aaguid)
    model = Trust.default(trust_dir=_folder(trust_dir, config_file))
    found = model.model(key)
    try:
        model.admit(key)
        verdict = "admitted: a key of this model is written to, then each attestation is verified"
    except DeviceError as exc:
        verdict = f"refused before the first write: {exc.message}"
    entry = model.mds.by_aaguid.get(key) if model.mds else None
    statuses = [f"{r.status.value}{' ' + r.effective_date.isoformat() if r.effective_date else ''}"
                for r in (entry.status_reports if entry else [])]
    report = {
        "aaguid": str(key),
        "model": {"name": found.name, "vendor": found.vendor, "source": found.source} if found else None,
        "authority": model.authority(key),
        "mds_status": statuses,
        "anchors": [_anchor_json(a, model) for a in model.anchors_for(key)],
        "verdict": verdict,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"AAGUID    {key}")
    click.echo(f"model     {found.name} ({found.vendor}, from {found.source})" if found else "model     not catalogued")
    if statuses:
        click.echo(f"status    {'; '.join(statuses)} (FIDO MDS)")
    click.echo(f"anchors   {'none' if not report['anchors'] else ''}")
    for a in report["anchors"]:
        click.echo(f"  {a['id']}  {a['source']:<12} {a['kind']:<6} until {a['not_after'][:10]}  {a['subject']}")
    click.echo(f"verdict   {verdict}")


__all__ = ["trust"]
