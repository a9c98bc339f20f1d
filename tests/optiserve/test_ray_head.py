"""optiserve.ray_head: what it replaces exists in the pinned Ray, is recorded while deferring,
and is put back after (the live server tests start real clusters through it)."""

from ray._private import services
from ray._private.node import Node

from optiserve.ray_head import DEFERRED, HeadStart


def test_deferring_records_the_head_processes_and_puts_ray_back():
    originals = {name: getattr(Node, name) for name in DEFERRED}
    get_node = services.get_node
    head = HeadStart("127.0.0.1:18265")

    class StandInNode:  # only the attribute the recorder sets; nothing is started
        _webui_url = None

    node = StandInNode()
    with head.deferring():
        assert all(getattr(Node, n) is not originals[n] for n in DEFERRED)
        assert services.get_node is not get_node
        Node.start_api_server(node, include_dashboard=True, raise_on_failure=True)
        Node.start_monitor(node)
    assert node._webui_url == "127.0.0.1:18265"  # what the raylet is told, as before
    assert head.pending
    assert {n: getattr(Node, n) for n in DEFERRED} == originals
    assert services.get_node is get_node


def test_another_ray_without_the_patched_methods_starts_as_ray_init_does(monkeypatch):
    """A Ray other than the pinned one (no such Node method): nothing is patched or deferred,
    ray.init runs with its own waits instead of failing."""
    monkeypatch.delattr(Node, "start_monitor")
    get_node = services.get_node
    head = HeadStart("127.0.0.1:18265")
    with head.deferring():
        assert services.get_node is get_node
        assert Node.start_api_server is Node.__dict__["start_api_server"]
    assert not head.pending
