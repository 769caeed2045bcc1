"""The vendor roots shipped in station/data/roots, each scoped to the models it is published for.

Yubico's three roots anchor every YubiKey the catalogue lists (Yubico's own documentation and the
FIDO metadata give these roots for all current and older FIDO2 YubiKeys). HID Global's five
"FIDO Attestation CA N" certificates are the anchors the FIDO metadata lists for the Crescendo
C2300, Crescendo Key, Crescendo Enabled, C3000 and Crescendo Key V2 (station/data/SOURCES.md);
they do NOT vouch for the Crescendo 4000, Key V3 or Fusion: the FIDO metadata names other
anchors for those (the Crescendo 4000 FIDO entry lists a certificate issued in 2025 by HID's
"FIDO Attestation Root CA 2", serial 4d195660c29c0673c4eb51fd17443b3f03d8f876, whose PEM is not
public here). Such a model is admitted only with an imported MDS BLOB (`station trust
import-mds`), which carries its anchors.
"""

from __future__ import annotations

import uuid
from functools import cache
from importlib import resources

from cryptography import x509

from station.trust.certs import parse_pem
from station.vendors import HID_GLOBAL, YUBICO, CatalogEntry
from station.vendors import catalogue as _shipped_catalogue

_HID_SCOPE = ("HID Crescendo C2300", "HID Crescendo Key", "HID Crescendo Enabled", "HID Crescendo C3000",
              "HID Crescendo Key V2")

#: (root file, vendor, model names it vouches for; None: every catalogued model of the vendor)
SHIPPED_ROOTS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("yubico-fido-ca-1_yubico-u2f-root-ca-serial-457200631.pem", YUBICO, None),
    ("yubico-fido-ca-2_yubico-fido-root-ca-serial-450203556.pem", YUBICO, None),
    ("yubico-ca-1_yubico-attestation-root-1.pem", YUBICO, None),
    *((f"hid-global_fido-attestation-ca-{n}.pem", HID_GLOBAL, _HID_SCOPE) for n in range(1, 6)),
)
INTERMEDIATE_FILES = ("yubico-intermediates.pem",)


def catalogue() -> dict[uuid.UUID, CatalogEntry]:
    """The shipped AAGUID catalogue (station/data/aaguids.json)."""
    return _shipped_catalogue()


def _roots_dir():
    return resources.files("station") / "data" / "roots"


@cache
def shipped_roots() -> tuple[tuple[str, x509.Certificate, frozenset[uuid.UUID]], ...]:
    """(file, certificate, the AAGUIDs it may vouch for) of every shipped root."""
    entries = catalogue().values()
    found = []
    for name, vendor, models in SHIPPED_ROOTS:
        scope = frozenset(e.aaguid for e in entries
                          if e.vendor == vendor and (models is None or set(e.models) & set(models)))
        for cert in parse_pem((_roots_dir() / name).read_bytes(), name):
            found.append((name, cert, scope))
    return tuple(found)


@cache
def shipped_intermediates() -> tuple[x509.Certificate, ...]:
    """Published intermediate CAs that real keys may leave out of their x5c."""
    return tuple(c for name in INTERMEDIATE_FILES for c in parse_pem((_roots_dir() / name).read_bytes(), name))
