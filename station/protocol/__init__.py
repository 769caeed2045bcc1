"""station.protocol: the wire contract of PROTOCOL.md and nothing else.

- `messages`: pydantic models of every payload and envelope (§2–§4);
- `jose`: open_request / seal_response (station), seal_request / open_response (customer);
- `keys`: the key store of transport and signing keys (§1);
- `bench`: the micro-benchmark of open_request and seal_response.
"""
