"""The identity-provider clients' configuration: overrides > environment > TOML > defaults;
secrets from the environment or a file, never from the TOML itself, never in a repr."""

from __future__ import annotations

import pytest

from station.customer.settings import CustomerConfigError, load_provider_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith(("STATION_OKTA_", "STATION_GRAPH_", "STATION_PINGONE_", "STATION_CUSTOMER_")):
            monkeypatch.delenv(name)


def write(tmp_path, text: str):
    path = tmp_path / "customer.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_public_endpoints():
    graph = load_provider_settings("graph", {}, None)
    assert graph.url == "https://graph.microsoft.com" and graph.login_url == "https://login.microsoftonline.com"
    ping = load_provider_settings("pingone", {"region": "eu"}, None)
    assert ping.api_base == "https://api.pingone.eu" and ping.auth_base == "https://auth.pingone.eu"


def test_toml_then_environment_then_overrides(tmp_path, monkeypatch):
    (tmp_path / "graph.secret").write_text("s3cret-from-file\n")
    path = write(tmp_path, '[graph]\ntenant_id = "t-file"\nclient_id = "c-file"\nclient_secret_file = "graph.secret"\n'
                           'url = "https://graph.file"\n')
    settings = load_provider_settings("graph", {}, path)
    assert (settings.tenant_id, settings.url) == ("t-file", "https://graph.file")
    assert settings.secret() == "s3cret-from-file"  # relative to the file's folder, newline removed
    monkeypatch.setenv("STATION_GRAPH_TENANT_ID", "t-env")
    monkeypatch.setenv("STATION_GRAPH_CLIENT_SECRET", "s3cret-from-env")
    settings = load_provider_settings("graph", {"url": "http://127.0.0.1:9"}, path)
    assert (settings.tenant_id, settings.url, settings.secret()) == ("t-env", "http://127.0.0.1:9", "s3cret-from-env")
    assert "s3cret" not in repr(settings)


def test_the_config_file_from_the_environment(tmp_path, monkeypatch):
    path = write(tmp_path, '[okta]\nurl = "https://acme.okta.com"\nrp_ids = ["acme.okta.com", "login.acme.com"]\n')
    monkeypatch.setenv("STATION_CUSTOMER_CONFIG", str(path))
    assert load_provider_settings("okta").enrollment_rp_ids == ["acme.okta.com", "login.acme.com"]


def test_a_secret_written_in_the_toml_is_refused(tmp_path):
    path = write(tmp_path, '[okta]\napi_token = "00abc"\n')
    with pytest.raises(CustomerConfigError, match="must not be written in the file") as refused:
        load_provider_settings("okta", {}, path)
    assert "00abc" not in str(refused.value)


@pytest.mark.parametrize("text, message", [
    ('[azure]\nurl = "x"\n', "unknown table 'azure'"),
    ('[graph]\ncolour = "blue"\n', "unknown key 'colour'"),
    ('[graph\n', "customer.toml"),
    ('[graph]\nchallenge_timeout_minutes = 4\n', "challenge_timeout_minutes"),
    ('[okta]\nurl = "ftp://acme"\n', "url"),
])
def test_bad_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(CustomerConfigError, match=message):
        load_provider_settings("graph" if "graph" in text else "okta", {}, write(tmp_path, text))


def test_an_unknown_environment_variable_is_refused(monkeypatch):
    monkeypatch.setenv("STATION_PINGONE_SECRET", "x")
    with pytest.raises(CustomerConfigError, match="STATION_PINGONE_SECRET"):
        load_provider_settings("pingone")


def test_a_missing_secret_says_where_to_put_it(tmp_path):
    settings = load_provider_settings("pingone", {}, None)
    with pytest.raises(CustomerConfigError, match="STATION_PINGONE_CLIENT_SECRET or client_secret_file"):
        settings.secret()
    settings = load_provider_settings("pingone", {"client_secret_file": str(tmp_path / "nope")}, None)
    with pytest.raises(CustomerConfigError, match="cannot read"):
        settings.secret()


def test_clients_need_their_ids(monkeypatch):
    from station.customer.graph import GraphClient

    monkeypatch.setenv("STATION_GRAPH_CLIENT_SECRET", "x")
    with pytest.raises(CustomerConfigError, match="tenant_id"):
        GraphClient(load_provider_settings("graph"))


@pytest.mark.parametrize("kind, call, body", [
    ("okta", lambda c: c.enroll(user_id="00u1", transport_key={"kty": "EC"}), {"userId": "00u1"}),
    ("okta", lambda c: c.activate(user_id="00u1", enrollment_id="e", pin_response_jwe="p", cred_response_jwes=[],
                                  serial="1", version="5.7.1", signing_jwks=[]), {"fulfillmentProvider": "yubico"}),
    ("graph", lambda c: c.creation_options("u", 10), {"publicKey": {"challenge": "x"}}),
    ("graph", lambda c: c.list_methods("u"), {"values": []}),
    ("pingone", lambda c: c.create_fido2_device("u"), {"status": "ACTIVATION_REQUIRED"}),
    ("pingone", lambda c: c.list_devices("u"), {"devices": []}),
])
def test_a_provider_answer_of_another_shape_is_a_clear_error(kind, call, body):
    """A server that answers 2xx with a body the provider does not document (a proxy, a wrong
    URL): a named error saying which member, never a KeyError later."""
    import httpx

    from station.customer.graph import GraphClient
    from station.customer.http import ProviderError
    from station.customer.okta import OktaClient
    from station.customer.pingone import PingOneClient
    from station.customer.settings import GraphSettings, OktaSettings, PingOneSettings

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(201 if request.method == "POST" and kind != "okta" else 200, json=body)

    transport = httpx.MockTransport(answer)
    client = {
        "okta": lambda: OktaClient(OktaSettings(api_token="00x"), transport=transport),
        "graph": lambda: GraphClient(GraphSettings(tenant_id="t", client_id="c", client_secret="s"), transport=transport),
        "pingone": lambda: PingOneClient(PingOneSettings(environment_id="e", client_id="c", client_secret="s",
                                                         policy_id="p", rp_id="example.org"), transport=transport),
    }[kind]()
    with client, pytest.raises(ProviderError, match="unexpected body") as refused:
        call(client)
    assert refused.value.code == "idp_unexpected_answer"


def test_the_readme_example_configuration_loads(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("A customer configuration for real tenants", 1)[1].split("```\n", 2)[1]
    path = write(tmp_path, block)
    for name in ("okta.token", "graph.secret", "pingone.secret"):
        (tmp_path / name).write_text("a-secret\n")
    assert load_provider_settings("okta", {}, path).secret() == "a-secret"
    assert load_provider_settings("graph", {}, path).challenge_timeout_minutes == 10080
    pingone = load_provider_settings("pingone", {}, path)
    assert pingone.api_base == "https://api.pingone.eu" and pingone.secret() == "a-secret"
