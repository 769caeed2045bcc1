-- The fulfillment schema version 1 (sqlite), as main created it before migrations existed

CREATE TABLE audit (
	id INTEGER NOT NULL, 
	at DOUBLE NOT NULL, 
	event VARCHAR(16) NOT NULL, 
	item_id INTEGER NOT NULL, 
	shipment_id VARCHAR(36) NOT NULL, 
	token_id INTEGER, 
	station VARCHAR(200), 
	serial_number VARCHAR(64), 
	outcome VARCHAR(64), 
	PRIMARY KEY (id)
);

CREATE TABLE request_digests (
	digest VARCHAR(64) NOT NULL, 
	item_id INTEGER NOT NULL, 
	received DOUBLE NOT NULL, 
	PRIMARY KEY (digest)
);

CREATE TABLE schema_version (
	version INTEGER NOT NULL
);

CREATE TABLE shipments (
	id VARCHAR(36) NOT NULL, 
	owner VARCHAR(200) NOT NULL, 
	envelope TEXT NOT NULL, 
	created DOUBLE NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_shipments_owner ON shipments (owner);

CREATE TABLE tokens (
	id INTEGER NOT NULL, 
	token_hash VARCHAR(64) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	created DOUBLE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (token_hash)
);

CREATE TABLE items (
	id INTEGER NOT NULL, 
	shipment_id VARCHAR(36) NOT NULL, 
	position INTEGER NOT NULL, 
	descriptor TEXT NOT NULL, 
	pin_request TEXT NOT NULL, 
	credential_requests TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	lease_owner INTEGER, 
	lease_expires DOUBLE, 
	result TEXT, 
	finished_at DOUBLE, 
	read_at DOUBLE, 
	PRIMARY KEY (id), 
	FOREIGN KEY(shipment_id) REFERENCES shipments (id)
);
CREATE INDEX items_leases ON items (state, lease_expires);
CREATE INDEX items_queue ON items (state, id);
CREATE INDEX ix_items_shipment_id ON items (shipment_id);

INSERT INTO schema_version (version) VALUES (1);
