"""FIDO pre-registration provisioning station."""

__version__ = "0.1.0"
