"""The tables of directory-connected provisioning (issue 15), defined on the store's MetaData
(station/fulfillment/store.py calls `define_tables(metadata)`) and created on older databases by
the migration step "directories: configurations, enrollments, audit" (migrations.py).

Nothing secret is in the clear here: the client secret and the service's response private key
are AES-GCM sealed (station.fulfillment.directories.sealing) under a key kept apart from the
database; the audit holds no secret, token or PIN.
"""

from __future__ import annotations

from sqlalchemy import Column, Double, Index, Integer, MetaData, String, Table, Text, UniqueConstraint


def define_tables(metadata: MetaData) -> tuple[Table, Table, Table]:
    """(directory_configs, directory_enrollments, directory_audit) on `metadata`. A later change
    to a table here needs a migration step of its own (add_column): the first step creates the
    tables from this definition, with create_table skipping what exists."""
    configs = Table(
        "directory_configs", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("owner", String(200), nullable=False),  # the tenant, as shipments' owner
        Column("name", String(100), nullable=False),
        Column("kind", String(16), nullable=False),  # entra | pingone
        Column("directory_id", String(100), nullable=False),  # Entra tenant ID, PingOne environment ID
        Column("client_id", String(200), nullable=False),
        Column("secret_sealed", Text, nullable=False),
        Column("settings", Text, nullable=False),  # JSON: region, endpoints, rp, policy, default address
        Column("pin_delivery_key", Text, nullable=False),  # the customer's public JWK (JSON)
        Column("response_key_public", Text, nullable=False),  # the service's response key (public JWK)
        Column("response_key_sealed", Text, nullable=False),  # ... and its private part, sealed
        Column("created", Double, nullable=False),
        Column("updated", Double, nullable=False),
        UniqueConstraint("owner", "name", name="directory_configs_owner_name"),
    )
    enrollments = Table(
        "directory_enrollments", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("config_id", Integer, nullable=False),
        Column("owner", String(200), nullable=False),
        Column("user_id", String(200), nullable=False),  # the directory's user id
        Column("user_name", String(320), nullable=True),  # UPN / username
        Column("shipment_id", String(36), nullable=False),
        Column("item_id", Integer, nullable=False),
        Column("state", String(16), nullable=False),  # pending | registered | refused | failed | cancelled
        Column("device_id", String(200), nullable=True),  # PingOne's FIDO2 device
        Column("origin", String(300), nullable=False),
        Column("not_after", Double, nullable=True),
        Column("credential_request", Text, nullable=False),  # the sealed request (its digest is checked)
        Column("credential_request_id", String(64), nullable=False),
        Column("pin_request", Text, nullable=False),  # for the customer's PIN delivery (requestDigest)
        Column("pin_request_id", String(64), nullable=False),
        Column("next_attempt", Double, nullable=True),
        Column("method_id", String(200), nullable=True),  # Graph's fido2Method / PingOne's device id
        Column("message", Text, nullable=True),  # the directory's refusal
        Column("created", Double, nullable=False),
        Column("updated", Double, nullable=False),
        Index("directory_enrollments_user", "config_id", "user_id", "state"),
        Index("directory_enrollments_pending", "state", "next_attempt"),
    )
    audit = Table(
        "directory_audit", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", Double, nullable=False),
        Column("owner", String(200), nullable=False),
        Column("actor", String(200), nullable=False),  # "token N" or "operator NAME" or "service"
        Column("config_name", String(100), nullable=False),
        Column("action", String(16), nullable=False),  # add test edit preflight resolve options register delete
        Column("target_user", String(320), nullable=True),
        Column("method_id", String(200), nullable=True),
        Column("outcome", String(16), nullable=False),  # ok | refused | throttled | error
        Column("http_status", Integer, nullable=True),
        Column("correlation_id", String(100), nullable=True),
        Column("message", Text, nullable=True),
        Index("directory_audit_config", "owner", "config_name", "id"),
    )
    return configs, enrollments, audit
