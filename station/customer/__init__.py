"""station.customer: the identity-provider side of pre-registration.

- `okta`, `graph`, `pingone`: HTTP clients (httpx) of Okta's WebAuthn preregistration API,
  Microsoft Graph's FIDO2 provisioning (beta) and PingOne's MFA devices API, configured by
  `settings` (pydantic-settings: customer.toml, STATION_OKTA_/GRAPH_/PINGONE_*; secrets from the
  environment or files only), sharing `http` (429 waits, token cache, named errors);
- `flows`: the vendors' sequences, one key per shipment: Yubico's Okta Workflows, its FIDO
  Connector for Entra ID, HID's PingOne flow;
- `orders`: seal a key's PIN and credential requests (PROTOCOL.md §2), the shipment body, and
  polling a shipment through any fulfillment port (§4: `FINISHED_STATES`, `STOP_STATES`);
- `verify`: open and check the responses (§3), attestation with python-fido2's `Fido2Server`;
- `signin`: the end user's sign-in with the key and the PIN, through `Fido2Client`, against the
  provider's relying party.

It never imports `station.provision`, `station.device` or `station.standins`: a customer touches
a key only as an end user does, and reaches the providers only over HTTP.
"""
