"""station.device"""
