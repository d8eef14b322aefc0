"""An MCP server for the worker's MCP tests (the official `mcp` package).

Over stdio by default; with `--http`, over streamable HTTP on 127.0.0.1 at an ephemeral
port, written as `listening on PORT` on stdout once it listens.
"""

import os
import socket
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("fleet-test-tools", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with the reason given."""
    raise ToolError(reason)


@server.tool()
def environment() -> str:
    """The names of the environment variables this server runs with."""
    return " ".join(sorted(os.environ))


@server.tool()
def pid() -> int:
    """This server's process id."""
    return os.getpid()


def serve_http() -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening before the port is told: a client that connects before uvicorn has started
    # waits in the backlog instead of being refused.
    sock.listen(128)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    if "--http" in sys.argv:
        serve_http()
    else:
        server.run()
