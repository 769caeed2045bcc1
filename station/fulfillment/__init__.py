"""station.fulfillment"""
