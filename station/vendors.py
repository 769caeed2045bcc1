"""Public vendor facts: AAGUID → vendor, model family, firmware line; each vendor's published FIDO
trust anchors. A leaf module: the station (naming keys, the counterfeit guard) and the customer
(verifying attestation) both read it, and it imports nothing of ours.

The data is public vendor data collected in `station/data/aaguids.json` and `station/data/roots/`
(see `station/data/SOURCES.md` for where each entry came from). One AAGUID often covers several
form factors of one firmware line (a YubiKey 5 NFC and a 5C NFC on 5.7 share an AAGUID), so an
entry carries every model name published for it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from cryptography import x509

YUBICO = "Yubico"
HID_GLOBAL = "HID Global"

#: USB vendor ids of the vendors a station names (any FIDO usage-page device is still accepted).
USB_VENDORS = {0x1050: YUBICO, 0x09C3: HID_GLOBAL}

#: Which published root files anchor which vendor's attestation chains.
_ROOT_FILES = {
    YUBICO: (
        "yubico-fido-ca-1_yubico-u2f-root-ca-serial-457200631.pem",
        "yubico-fido-ca-2_yubico-fido-root-ca-serial-450203556.pem",
        "yubico-ca-1_yubico-attestation-root-1.pem",
    ),
    HID_GLOBAL: tuple(f"hid-global_fido-attestation-ca-{n}.pem" for n in range(1, 6)),
}
_INTERMEDIATE_FILES = {YUBICO: ("yubico-intermediates.pem",), HID_GLOBAL: ()}


@dataclass(frozen=True)
class CatalogEntry:
    """One published AAGUID: its vendor, the model names that report it, its firmware line."""

    aaguid: uuid.UUID
    vendor: str
    models: tuple[str, ...]
    firmware: str | None

    @property
    def short_name(self) -> str:
        """The first model name and the firmware line: 'YubiKey 5 NFC (5.7)'."""
        return f"{self.models[0]} ({self.firmware})" if self.firmware else self.models[0]

    @property
    def name(self) -> str:
        """A readable model name: 'YubiKey 5 NFC / YubiKey 5C NFC (5.7)'."""
        models = " / ".join(self.models)
        return f"{models} ({self.firmware})" if self.firmware else models


def _data_dir():
    return resources.files("station") / "data"


@cache
def _entries() -> dict[uuid.UUID, CatalogEntry]:
    raw = json.loads((_data_dir() / "aaguids.json").read_text(encoding="utf-8"))
    grouped: dict[uuid.UUID, dict] = {}
    for row in raw:
        key = uuid.UUID(row["aaguid"])
        entry = grouped.setdefault(key, {"vendor": row["vendor"], "models": [], "firmware": row["firmware"]})
        if row["model"] not in entry["models"]:
            entry["models"].append(row["model"])
    return {
        key: CatalogEntry(aaguid=key, vendor=v["vendor"], models=tuple(v["models"]), firmware=v["firmware"])
        for key, v in grouped.items()
    }


def catalogue() -> dict[uuid.UUID, CatalogEntry]:
    """Every published AAGUID of the shipped catalogue, by AAGUID."""
    return dict(_entries())


def lookup(aaguid: bytes | str | uuid.UUID) -> CatalogEntry | None:
    """The catalogue entry of an AAGUID (16 bytes, UUID string or UUID), or None if unknown."""
    if isinstance(aaguid, bytes):
        key = uuid.UUID(bytes=aaguid)
    elif isinstance(aaguid, str):
        key = uuid.UUID(aaguid)
    else:
        key = aaguid
    return _entries().get(key)


def _load_pems(names: tuple[str, ...]) -> list[x509.Certificate]:
    roots = _data_dir() / "roots"
    certs: list[x509.Certificate] = []
    for name in names:
        certs.extend(x509.load_pem_x509_certificates((roots / name).read_bytes()))
    return certs


@cache
def vendor_roots(vendor: str) -> tuple[x509.Certificate, ...]:
    """The published FIDO attestation trust anchors of a vendor (empty for an unknown vendor)."""
    return tuple(_load_pems(_ROOT_FILES.get(vendor, ())))


@cache
def vendor_intermediates(vendor: str) -> tuple[x509.Certificate, ...]:
    """Published intermediate CAs that real keys may omit from their x5c."""
    return tuple(_load_pems(_INTERMEDIATE_FILES.get(vendor, ())))


def load_operator_roots(folder: Path) -> list[x509.Certificate]:
    """Extra trust anchors an operator added (PEM files in a folder), for models whose anchors
    are not public (Crescendo 4000, Crescendo Key V3)."""
    certs: list[x509.Certificate] = []
    for path in sorted(folder.glob("*.pem")):
        certs.extend(x509.load_pem_x509_certificates(path.read_bytes()))
    return certs
