"""Sans-I/O protocol code for both TCP dialects (and the WebSocket transport).

Nothing in this package imports trio, socket or os: it turns bytes into events and events into
bytes, so its tests need no event loop.
"""
