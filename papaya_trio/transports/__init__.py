"""Transports turn connections into Peers: raw TCP (both dialects) and WebSocket."""
