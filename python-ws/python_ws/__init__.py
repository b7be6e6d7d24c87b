"""python-ws: wslab's Tornado WebSocket server, the Python twin of rust-ws (see PROTOCOL.md).

Each module's header names its rust-ws twin (or says why it has none); the map of both servers'
files is the twins table in the repository's README.md.

Twin: rust-ws/src/lib.rs (the crate root; `make_app` is in app.py)
"""

__version__ = "1.0.0"
SERVER_NAME = "python-ws"
