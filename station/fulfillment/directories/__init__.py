"""Directory-connected provisioning (issue 15): see station.fulfillment.directories.service."""
