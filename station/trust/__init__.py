"""The counterfeit guard's knowledge: which certificate may vouch for which AAGUID.

Three sources, one model (`policy.Trust`):
- shipped: the vendors' published FIDO roots (station/data/roots), each scoped to the catalogued
  AAGUIDs of the models the FIDO metadata lists it for (`shipped.py`);
- MDS: a FIDO Metadata Service BLOB the operator downloaded and imported (`mds.py`): for each
  AAGUID in it, exactly the roots its entry lists, and its status reports;
- operator: the trust store folder (`store.py`): models the operator buys that no vendor list
  names (pico-fido on a test line), and the roots or pinned self-signed attestation certificates
  that vouch for exactly those models.
The virtual authenticator's TEST CA is added only for virtual keys, the demo and the tests.
"""

from station.trust.errors import TrustError

__all__ = ["TrustError"]
