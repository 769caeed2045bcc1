"""The trust rows of `station doctor`: the store, the MDS BLOB's age, TEST CA trust, attached keys.

Each function returns a `Row` (station.checks.Check); station/doctor.py shows it as one of its checks. A warning (`warn`)
is shown but does not fail the doctor: a BLOB past its nextUpdate, or none imported.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path

from station.checks import Check as Row
from station.errors import DeviceError
from station.trust.errors import TrustError
from station.trust.policy import Trust
from station.trust.store import TrustDir

_MDS_FIX = ("download the FIDO Alliance's MDS3 BLOB (see fidoalliance.org/metadata) and run: "
            "station trust import-mds BLOB.jwt")


def load(trust_dir: Path) -> tuple[Trust | None, Row]:
    """The store's row, and the trust model (None when the store cannot be read)."""
    try:
        trust = Trust.default(trust_dir=trust_dir)
    except TrustError as exc:
        return None, Row("trust store", False, exc.message, f"restore {trust_dir} from its backup (then: station trust list)")
    loose = TrustDir(trust_dir).loose_modes()
    if loose:
        return trust, Row("trust store", False, f"readable or writable by others: {', '.join(loose)}",
                          f"chmod 0700 {trust_dir} && chmod 0600 {trust_dir}/*")
    operator, models = trust.index.anchors, trust.index.models
    shipped = sum(1 for a in trust.anchors if a.source == "shipped")
    mds = sum(1 for a in trust.anchors if a.source == "mds")
    return trust, Row("trust store", True, f"{trust_dir}: {len(operator)} operator anchor(s), {len(models)} operator "
                      f"model(s); {shipped} shipped and {mds} MDS anchor(s) for {len(trust.models)} catalogued AAGUIDs")


def blob_row(trust: Trust | None, *, today: dt.date | None = None) -> Row:
    today = today or dt.date.today()
    record = trust.index.mds if trust is not None else None
    if record is None:
        return Row("MDS BLOB", False, "none imported: models whose roots are not shipped (Crescendo 4000, Key V3, "
                   "Fusion) are refused before the first write", _MDS_FIX, warn=True)
    age = (dt.datetime.now(dt.timezone.utc) - record.imported_at).days
    detail = f"no {record.no}, imported {age} day(s) ago, nextUpdate {record.next_update.isoformat()}"
    if record.next_update < today:
        return Row("MDS BLOB", False, f"{detail}: past its nextUpdate by {(today - record.next_update).days} day(s), "
                   "so revocations since may be missing", _MDS_FIX, warn=True)
    return Row("MDS BLOB", True, detail)


def test_ca_row(*, trust_test_ca: bool, device: str) -> Row:
    """Red whenever the configuration trusts the TEST CA (its private key is in this repository)."""
    if trust_test_ca:
        return Row("TEST CA", False, "trusted by configuration (trust_test_ca): the TEST CA's private key is public, "
                   "so any key could be made to look genuine", "set trust_test_ca = false (or drop --trust-test-ca / "
                   "STATION_RUN_TRUST_TEST_CA) on every production station")
    if device.startswith("virtual:"):
        return Row("TEST CA", True, "trusted for virtual: keys only (the device spec is virtual)")
    return Row("TEST CA", True, "not trusted")


def attached_row(trust: Trust | None, keys: list[tuple[str, uuid.UUID]] | None) -> Row:
    """Every attached key (label, AAGUID from getInfo) that would be refused before the first write."""
    if keys is None:
        return Row("key anchors", True, "not checked: `station doctor --attached-keys` opens each attached key "
                   "(not while station run programs keys; virtual: keys are anchored by the TEST CA)")
    if trust is None:
        return Row("key anchors", False, "the trust store cannot be read", "see the trust store row")
    if not keys:
        return Row("key anchors", True, "no key attached")
    refused = []
    for label, aaguid in keys:
        try:
            trust.admit(aaguid)
        except DeviceError as exc:
            refused.append(f"{label} AAGUID {aaguid}: {exc.message.split(';')[0]}")
    if refused:
        return Row("key anchors", False, "; ".join(refused),
                   "set these keys aside, or: station trust show AAGUID (and import-mds / add-model / add-root)")
    return Row("key anchors", True, f"{len(keys)} attached key(s), each with an anchor")


def trust_rows(trust_dir: Path, *, trust_test_ca: bool, device: str,
               list_keys: Callable[[str], list[tuple[str, uuid.UUID]] | None] | None = None) -> list[Row]:
    trust, store = load(trust_dir)
    keys = list_keys(device) if list_keys is not None else None
    return [store, blob_row(trust), test_ca_row(trust_test_ca=trust_test_ca, device=device), attached_row(trust, keys)]
