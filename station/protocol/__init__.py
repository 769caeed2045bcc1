"""station.protocol"""
