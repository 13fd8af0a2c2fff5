import socket

import pytest


def test_sockets_are_blocked_in_zoo_tests(no_network):
    with pytest.raises(RuntimeError, match="network access attempted"):
        socket.create_connection(("example.org", 80), timeout=1)
    with pytest.raises(RuntimeError, match="network access attempted"):
        socket.getaddrinfo("example.org", 80)
    assert len(no_network) == 2
    no_network.clear()  # the attempts above were the point of this test
