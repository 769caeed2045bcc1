"""station.virtual"""
