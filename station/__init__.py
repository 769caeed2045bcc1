"""FIDO pre-registration provisioning station."""

from station import _fido2_hints  # noqa: F401  (memoizes python-fido2's type-hint evaluation)

__version__ = "0.1.0"
