"""A client that does part of its work, says READY, and waits to be killed.

Run as ``python -m tests.fault_client upload|match TARGET TOKEN``; the fault
tests SIGKILL it after READY to simulate a partner dying mid-stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator

import grpc

from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.proto import cleanroom_pb2 as pb
from cleanroom.proto import cleanroom_pb2_grpc as pb_grpc


def digest(i: int) -> bytes:
    return hashlib.sha256(f"user{i}@example.com".encode()).digest()


async def main(mode: str, target: str, token: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    forever = asyncio.Event()
    async with grpc.aio.insecure_channel(target) as channel:
        if mode == "upload":
            stub = pb_grpc.AudienceServiceStub(channel)

            async def requests() -> AsyncIterator[pb.UploadRequest]:
                yield pb.UploadRequest(header=pb.UploadHeader(name="killed", id_types=[pb.EMAIL]))
                for seq in range(3):
                    digests = b"".join(digest(seq * 100 + i) for i in range(100))
                    yield pb.UploadRequest(
                        chunk=pb.UploadChunk(
                            seq=seq,
                            row_count=100,
                            columns=[pb.IdColumnChunk(column=0, digests=digests)],
                        )
                    )
                print("READY", flush=True)
                await forever.wait()

            await stub.Upload(requests(), metadata=metadata)
        else:
            matching = pb_grpc.MatchingServiceStub(channel)
            call = matching.Session(metadata=metadata)
            await call.write(
                pb.PartnerMessage(
                    hello=pb.Hello(
                        audience=sys.argv[4],
                        protocol=pb.MATCH,
                        declared_records=200,
                        declared_points=200,
                    )
                )
            )
            await call.read()
            points = b"".join(hash_to_curve(digest(i), b"x") for i in range(50))
            await call.write(pb.PartnerMessage(points=pb.PointChunk(seq=0, points=points)))
            await call.read()  # the brand set or our re-blinded values: the session is live
            print("READY", flush=True)
            await forever.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
