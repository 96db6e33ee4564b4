import pytest

from graflow_runtime.grpc_server import create_server


async def test_a_taken_port_fails_the_start_instead_of_being_shared() -> None:
    first = create_server("127.0.0.1:0", [])
    await first.server.start()
    try:
        with pytest.raises((OSError, RuntimeError), match="bind|Failed"):
            create_server(f"127.0.0.1:{first.port}", [])
    finally:
        await first.server.stop(None)
