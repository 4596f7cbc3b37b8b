"""Send-only sockets drop a peer that sends them a message larger than the ZMTP handshake's
(tests/zmtp_peer.py: a raw ZMTP 3.0 client over TCP, calling itself PULL)."""

from __future__ import annotations

from zmtp_peer import peer_is_dropped

from streamtrk.client import Producer
from streamtrk.wire.sockets import MAX_INBOUND_BYTES


def test_a_producer_drops_a_peer_that_sends_it_a_large_message() -> None:
    """The limit is docs/serve.md's 64 KiB, to the byte: a message of 65,536 bytes is kept
    (unread) and its peer stays connected; one of 65,537 drops the peer."""
    assert MAX_INBOUND_BYTES == 65_536
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        assert producer.endpoint is not None
        assert peer_is_dropped(producer.endpoint, 65_537)
        assert not peer_is_dropped(producer.endpoint, 65_536, timeout_s=1.0)
