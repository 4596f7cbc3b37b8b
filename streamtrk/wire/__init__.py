"""Wire protocol: ZeroMQ multipart messages with a msgpack header and raw column frames."""

from streamtrk.wire.codec import (
    Message,
    TrackReply,
    decode,
    encode_hits,
    encode_tracks,
    encode_truth,
    frame_view,
    identity_of,
    msg_id_of,
    peek_header,
    peek_identity,
    peek_msg_id,
    with_msg_id,
)
from streamtrk.wire.schema import (
    DEFAULT_LIMITS,
    ENCODED_VERSIONS,
    REASONS,
    SUPPORTED_VERSIONS,
    VERSION,
    Limits,
    WireError,
)

__all__ = [
    "DEFAULT_LIMITS",
    "ENCODED_VERSIONS",
    "REASONS",
    "SUPPORTED_VERSIONS",
    "VERSION",
    "Limits",
    "Message",
    "TrackReply",
    "WireError",
    "decode",
    "encode_hits",
    "encode_tracks",
    "encode_truth",
    "frame_view",
    "identity_of",
    "msg_id_of",
    "peek_header",
    "peek_identity",
    "peek_msg_id",
    "with_msg_id",
]
