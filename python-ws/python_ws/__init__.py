"""python-ws: wslab's Tornado WebSocket server, the Python twin of rust-ws (see PROTOCOL.md)."""

__version__ = "1.0.0"
SERVER_NAME = "python-ws"
