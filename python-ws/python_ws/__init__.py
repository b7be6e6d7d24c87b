"""python-ws: wslab's Tornado WebSocket server, the Python twin of rust-ws (see PROTOCOL.md).

Modules mirror rust-ws/src one for one: app, routes, connection, hub, protocol,
config, metrics, healthcheck, plus one file per library workaround (tornado_close_codes).

Twin: rust-ws/src/lib.rs (the crate root; `make_app` is in app.py)
"""

__version__ = "1.0.0"
SERVER_NAME = "python-ws"
