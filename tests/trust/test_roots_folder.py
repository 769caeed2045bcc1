"""The deprecated `--roots` folder: loaded into the same model, scoped to operator models only."""

from __future__ import annotations

import pytest
from station.trust.manage import add_model
from station.trust.policy import Trust

from .pki import PICO_AAGUID, YUBIKEY_57, der, pem, root, self_signed_attestation, write


def test_roots_folder_anchors_vouch_for_operator_models_and_never_for_a_yubikey(store, tmp_path):
    folder = tmp_path / "roots"
    folder.mkdir()
    ca, _ = root("Old Operator Root")
    att, _ = self_signed_attestation()
    write(folder / "op.pem", pem(ca))
    write(folder / "pico.pem", pem(att))
    add_model(store, str(PICO_AAGUID), name="Pico Key", vendor="pico-fido")
    trust = Trust.default(trust_dir=store, operator_roots=folder)
    assert {(a.kind, a.source) for a in trust.anchors_for(PICO_AAGUID)} == {("root", "roots-folder"), ("pinned", "roots-folder")}
    assert all(a.source == "shipped" for a in trust.anchors_for(YUBIKEY_57))


@pytest.mark.parametrize("files, needle", [
    ({}, "holds no certificate file"),
    ({"root.der": "der"}, "DER certificate, not PEM"),
    ({"broken.pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "malformed PEM"),
    ({"notes.txt": b"remember to buy keys"}, "no PEM certificate"),
])
def test_a_bad_roots_folder_is_one_line(tmp_path, files, needle):
    folder = tmp_path / "roots"
    folder.mkdir()
    for name, data in files.items():
        write(folder / name, der(root("R")[0]) if data == "der" else data)
    with pytest.raises(Exception) as refused:
        Trust.default(operator_roots=folder)
    assert refused.value.code == "trust" and needle in refused.value.message
