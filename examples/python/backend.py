"""A backend service in Python: sends one message with SendDirect, then pages through
ListOnline.

    python3 backend.py [RECEIVER_ID] [TEXT]

The stubs are generated from proto/ with grpcio-tools at start, into a temporary directory,
so they always match the contract; a team that commits its stubs runs the same protoc
command once (README: "Backend examples").

Environment: GATEWAY_GRPC_ADDR (default 127.0.0.1:50051), GATEWAY_API_KEY (sent as
`authorization: Bearer KEY` when set), PAGE_SIZE (ListOnline page size, default 100).
"""

import importlib
import os
import sys
import tempfile
from pathlib import Path

import grpc
import grpc_tools
from google.protobuf import json_format, struct_pb2
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent.parent.parent / "proto"


def generate_stubs(out_dir):
    """messaging_pb2 and messaging_pb2_grpc for proto/messaging/v1/messaging.proto."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/struct.proto
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_DIR / "messaging/v1/messaging.proto"),
        ]
    )
    if rc != 0:
        raise SystemExit(f"error: protoc failed ({rc}) on {PROTO_DIR}")
    sys.path.insert(0, out_dir)
    return (
        importlib.import_module("messaging.v1.messaging_pb2"),
        importlib.import_module("messaging.v1.messaging_pb2_grpc"),
    )


def main():
    receiver_id = sys.argv[1] if len(sys.argv) > 1 else "user123"
    text = sys.argv[2] if len(sys.argv) > 2 else "Hello from the Python backend"
    addr = os.environ.get("GATEWAY_GRPC_ADDR", "127.0.0.1:50051")
    api_key = os.environ.get("GATEWAY_API_KEY", "")
    page_size = int(os.environ.get("PAGE_SIZE", "100"))
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else []

    with tempfile.TemporaryDirectory() as out_dir:
        pb, pb_grpc = generate_stubs(out_dir)
        with grpc.insecure_channel(addr) as channel:
            stub = pb_grpc.MessagingStub(channel)
            try:
                sent = stub.SendDirect(
                    pb.SendDirectRequest(
                        receiver_id=receiver_id,
                        sender_id="examples/python",
                        message=json_format.ParseDict(
                            {"text": text, "from": "examples/python"}, struct_pb2.Value()
                        ),
                    ),
                    metadata=metadata,
                    timeout=10,
                )
                print(f"sent to {receiver_id}: delivered to {sent.delivered_sockets} socket(s)")

                page_token, page = "", 0
                while True:
                    resp = stub.ListOnline(
                        pb.ListOnlineRequest(page_size=page_size, page_token=page_token),
                        metadata=metadata,
                        timeout=10,
                    )
                    page += 1
                    print(f"online page {page}: {', '.join(resp.user_ids)}")
                    page_token = resp.next_page_token
                    if not page_token:
                        break
                print(f"{resp.total} user(s) online")
            except grpc.RpcError as err:
                # The status name and the gateway's message.
                raise SystemExit(f"error: {err.code().name}: {err.details()}") from None


if __name__ == "__main__":
    main()
