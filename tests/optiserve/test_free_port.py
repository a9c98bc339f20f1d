"""The port picker never hands out a port twice in one process, nor one of Ray's defaults, even
when the kernel offers the same free port again (it did: a dashboard and a metrics port chosen
back to back collided and Ray refused to start). The kernel's answers are scripted here (a
stand-in for socket.bind to port 0, whose repeats cannot be provoked on demand)."""

from __future__ import annotations

import optiserve.local as local


def test_a_port_offered_again_by_the_kernel_is_not_given_twice(monkeypatch):
    offered = iter([41001, 41001, 8265, 41001, 41002])

    class Socket:
        def __init__(self, *_):
            self.port = next(offered)

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def bind(self, _):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(local, "_GIVEN", set())
    monkeypatch.setattr(local.socket, "socket", Socket)
    assert [local.free_port(), local.free_port()] == [41001, 41002]
