"""station.provision"""
