"""Transports: the SPI (`eventbus.transports.base`) and the in-memory transport."""
