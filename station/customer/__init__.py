"""station.customer"""
