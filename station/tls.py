"""One TLS context for every httpx client of this process.

httpx builds a fresh `ssl.SSLContext` for each `httpx.Client` (loading certifi's CA bundle: 10 to
40 ms of CPU here), even for a client that only ever speaks plain HTTP on loopback. The clients
of the fulfillment service, the identity providers and the sign-in page take this one instead:
the same verification (httpx's own `create_ssl_context()`: certifi's roots, hostname checks, and
SSL_CERT_FILE / SSL_CERT_DIR as httpx honours them), built once. An `SSLContext` is safe to share
between clients and threads.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def client_tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, made on first use and shared from then on."""
    import httpx

    return httpx.create_ssl_context()
