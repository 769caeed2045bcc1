"""One Ctap2 session per opened key: getInfo is read again only when a command could have changed
it (station.device.session), counted at the virtual key."""

from __future__ import annotations

import pytest
from fido2.ctap import CtapError
from fido2.ctap2 import ClientPin, Ctap2

from station.device.session import SessionCtap2
from station.provision.item import provision_item
from station.virtual.authenticator import VirtualAuthenticator


@pytest.fixture
def sent(monkeypatch):
    """The CTAP command bytes every virtual key receives, in order."""
    commands: list[int] = []
    original = VirtualAuthenticator.process

    def process(self, request, **kw):
        commands.append(request[0])
        return original(self, request, **kw)

    monkeypatch.setattr(VirtualAuthenticator, "process", process)
    return commands


def getinfos(commands: list[int]) -> int:
    return commands.count(Ctap2.CMD.GET_INFO)


@pytest.mark.parametrize("transport", ["direct", "hid"])
def test_an_item_reads_getinfo_once_per_change_of_the_key(transport, make_key, order, keystore, trust, sent):
    device = make_key(transport=transport)
    sealed = order("graph", "okta")
    sent.clear()
    provision_item(device=device, pin_request_jwe=sealed.pin_request_jwe,
                   credential_request_jwes=sealed.credential_request_jwes, keystore=keystore, trust=trust)
    # python-fido2's Fido2Client alone reads it once when built and 3 times per makeCredential
    # (7 here, 8 with the opening's); with the session: the opening's read serves the preflight,
    # then one read after setPIN, one after makeCredential #1 (remainingDiscoverableCredentials)
    # and the final one after authenticatorConfig
    assert getinfos(sent) == 3
    assert sent.count(Ctap2.CMD.MAKE_CREDENTIAL) == 2
    # each getInfo after the first follows a command that changes what getInfo reports
    changing = {Ctap2.CMD.MAKE_CREDENTIAL, Ctap2.CMD.CONFIG, Ctap2.CMD.CLIENT_PIN}
    for index, command in enumerate(sent):
        if command == Ctap2.CMD.GET_INFO and index and getinfos(sent[:index]):
            before = sent[:index]
            last = max(i for i, c in enumerate(before) if c == Ctap2.CMD.GET_INFO)
            assert changing & set(before[last + 1:]), "getInfo read again with nothing changed"


def test_the_session_reads_getinfo_again_after_setpin_and_shows_the_pin(make_key, sent):
    device = make_key()
    session = device.ctap2()
    assert isinstance(session, SessionCtap2)
    sent.clear()
    assert session.get_info() is session.get_info()
    assert getinfos(sent) == 0
    assert not session.get_info().options.get("clientPin")
    ClientPin(session).set_pin("482915")
    info = session.get_info()
    assert getinfos(sent) == 1 and info.options.get("clientPin") is True
    ClientPin(session).get_pin_retries()  # a read: the answer holds
    session.get_info()
    assert getinfos(sent) == 1


def test_a_failed_command_still_forgets_the_answer(make_key, sent):
    device = make_key()
    session = device.ctap2()
    with pytest.raises(CtapError):
        ClientPin(session).change_pin("000000", "123456")  # no PIN set: refused
    sent.clear()
    session.get_info()
    assert getinfos(sent) == 1


def test_reset_forgets_the_answer(make_key, sent):
    device = make_key()
    session = device.ctap2()
    ClientPin(session).set_pin("482915")
    assert session.get_info().options.get("clientPin") is True
    session.reset()
    assert not session.get_info().options.get("clientPin")


def test_a_reopened_key_is_read_again(make_key, sent, tmp_path):
    device = make_key(name="a.json")
    ClientPin(device.ctap2()).set_pin("482915")
    device.close()
    again = make_key(name="a.json")
    assert again.ctap2() is not device.ctap2()
    assert again.info.options.get("clientPin") is True and again.pin_set


def test_keys_that_answer_alike_share_one_parse_and_others_do_not(make_key):
    first, second = make_key(name="a.json"), make_key(name="b.json")
    assert first.ctap2().get_info() is second.ctap2().get_info()  # two fresh keys of one model
    ClientPin(first.ctap2()).set_pin("482915")
    changed = first.ctap2().get_info()
    assert changed is not second.ctap2().get_info()
    assert changed.options["clientPin"] is True and not second.ctap2().get_info().options.get("clientPin")
    other = make_key(profile="crescendo-key", name="c.json")
    assert other.ctap2().get_info().aaguid != second.ctap2().get_info().aaguid


def test_one_token_cannot_serve_the_whole_item_a_makecredential_clears_its_permissions(make_key):
    """Why an item asks for a token per credential and another for authenticatorConfig: CTAP 2.1
    §6.1.2 (authenticatorMakeCredential, after user presence) clears every permission of the
    pinUvAuthToken except lbw, and the first mc binds the token to that rp.id. The virtual key
    enforces it, as a CTAP 2.1 YubiKey does."""
    from fido2.ctap2 import CredentialManagement
    from fido2.ctap2.config import Config

    from station.provision.pin import pin_protocol_for

    device = make_key()
    session = device.ctap2()
    ClientPin(session).set_pin("482915")
    client_pin = ClientPin(session, pin_protocol_for(session.info))
    protocol = client_pin.protocol
    wanted = ClientPin.PERMISSION.MAKE_CREDENTIAL | ClientPin.PERMISSION.AUTHENTICATOR_CFG
    token = client_pin.get_pin_token("482915", wanted, "acme.okta.com")

    def make(rp_id: str) -> None:
        cdh = bytes(32)
        session.make_credential(cdh, {"id": rp_id, "name": rp_id}, {"id": b"u", "name": "u"},
                                [{"type": "public-key", "alg": -7}], options={"rk": True},
                                pin_uv_param=protocol.authenticate(token, cdh), pin_uv_protocol=protocol.VERSION)

    make("acme.okta.com")
    for again in (lambda: make("acme.okta.com"), lambda: make("login.microsoft.com"),
                  lambda: Config(session, protocol, token).set_min_pin_length(force_change_pin=True)):
        with pytest.raises(CtapError) as refused:
            again()
        assert refused.value.code == CtapError.ERR.PIN_AUTH_INVALID
    cm_token = client_pin.get_pin_token("482915", ClientPin.PERMISSION.CREDENTIAL_MGMT)
    assert CredentialManagement(session, protocol, cm_token).get_metadata()[
        CredentialManagement.RESULT.EXISTING_CRED_COUNT] == 1
