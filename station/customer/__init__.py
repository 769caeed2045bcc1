"""station.customer: the identity-provider side of pre-registration.

- `orders`: seal a key's PIN and credential requests (PROTOCOL.md §2), the shipment body, and
  polling a shipment through any fulfillment port (§4);
- `verify`: open and check the responses (§3), verify the registration and attestation with
  python-fido2's `Fido2Server`, the PIN to mail (`MailedPin`);
- `okta`: an Okta-like tenant (enroll / activate, rp = the tenant domain);
- `entra`: an Entra-like tenant (Graph's creationOptions and fido2Methods) and its connector;
- `signin`: the end user's sign-in with the key and the PIN, through `Fido2Client`.

It never imports `station.provision` or opens a device through `station.device`: a customer
touches a key only as an end user does, through python-fido2's client.
"""
