"""Connections that never send a request: capped per address, closed at the head deadline.

Against ``fheestimators serve`` in its own process; the attacker connects from 127.0.0.2,
everyone else from other loopback addresses.
"""
from __future__ import annotations

import socket
import time

import httpx
import pytest
from serving import Service, wait_for

HEAD_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 4
PARTIAL_HEAD = b"POST /keys HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
def service(saved_classifier, tmp_path_factory):
    options = ("--workers", "1", "--head-timeout-s", str(HEAD_TIMEOUT_S),
               "--max-address-connections", str(MAX_CONNECTIONS))
    with Service.in_tmp(saved_classifier, tmp_path_factory, "connections").start(*options).wait_ready() as service:
        yield service


def _connect(service: Service, source: str, first_bytes: bytes = PARTIAL_HEAD) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), source_address=(source, 0))
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionError:
        return True


def test_an_address_holds_a_few_unfinished_heads_and_only_until_the_deadline(service):
    opened = time.monotonic()
    attacker = [_connect(service, "127.0.0.2") for _ in range(10)]
    silent = _connect(service, "127.0.0.3", first_bytes=b"")  # another address, which sends nothing
    closed = set()

    def refused_all_but_the_cap() -> bool:
        closed.update(i for i, sock in enumerate(attacker) if i not in closed and _closed_by_server(sock))
        return len(closed) >= len(attacker) - MAX_CONNECTIONS

    wait_for(refused_all_but_the_cap, HEAD_TIMEOUT_S / 2)
    if time.monotonic() - opened < HEAD_TIMEOUT_S:  # no deadline has passed: the first ones are still open
        assert closed == set(range(MAX_CONNECTIONS, len(attacker)))
        assert not _closed_by_server(silent)
    # the attacker's open connections do not keep anyone else out
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1"), timeout=10) as honest:
        assert honest.get(f"{service.url}/health").status_code == 200

    wait_for(lambda: all(_closed_by_server(sock) for sock in attacker[:MAX_CONNECTIONS]), HEAD_TIMEOUT_S + 10)
    assert _closed_by_server(silent)
    for sock in [*attacker, silent]:
        sock.close()
    # closed connections no longer count against the address
    again = _connect(service, "127.0.0.2", first_bytes=b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    again.settimeout(10)
    assert again.recv(64).startswith(b"HTTP/1.1 200")
    again.close()


def test_the_deadline_covers_heads_only_not_bodies_nor_kept_alive_connections(service):
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4"), timeout=10) as client:
        assert client.get(f"{service.url}/health").status_code == 200
        time.sleep(1.0)  # uvicorn keeps the connection alive 5 s; the next request's head starts a new deadline
        assert client.get(f"{service.url}/health").status_code == 200
    # a complete head, then a body slower than the head deadline: answered, not cut at the deadline
    sock = _connect(service, "127.0.0.4", b"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
    time.sleep(HEAD_TIMEOUT_S + 0.5)
    assert not _closed_by_server(sock)
    sock.sendall(b"abcd")
    sock.settimeout(10)
    assert sock.recv(64).startswith(b"HTTP/1.1 4")  # the service's own refusal of these bytes
    sock.close()
