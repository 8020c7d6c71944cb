"""The metadata service as a real Ray actor, through the agents' Ray adapter: calls
round-trip, bulk answers arrive as columns, and errors keep their type."""

from __future__ import annotations

import asyncio

import pytest

from ray_stream.actors.metadata_client import RayMetadataClient
from ray_stream.config import Settings
from ray_stream.core.metadata_api import CommitRequest, LocateRequest
from ray_stream.core.types import BatchEntry
from ray_stream.errors import InvalidTopic, OffsetOutOfRange, UnknownTopicOrPartition
from ray_stream.metadata.service import MetadataService


@pytest.mark.integration
def test_metadata_service_under_ray(ray_session, tmp_path, unique_name):
    ray = ray_session
    settings = Settings(data_dir=str(tmp_path / "data"))
    actor = (
        ray.remote(num_cpus=0)(MetadataService)
        .options(name=f"metadata-{unique_name}")
        .remote(settings)
    )
    client = RayMetadataClient(namespace="ray_stream", retry_s=0, handle=actor)

    async def scenario():
        info = await client.create_topic(unique_name, 2)
        entries = [
            BatchEntry(unique_name, 1, 0, 50, 3, 10, 20),
            BatchEntry(unique_name, 1, 50, 70, 2, 30, 40),
        ]
        answers = await asyncio.gather(
            *(
                client.commit([CommitRequest.of(f"segments/{i}.arrow", 120, entries)])
                for i in range(4)
            )
        )
        located = await client.locate(
            LocateRequest(((unique_name, 1, 4, 1 << 20), (unique_name, 1, 21, 100)))
        )
        woken = await client.locate(LocateRequest(((unique_name, 1, 0, 1),), wait_ms=5000))
        return info, answers, located, woken

    try:
        info, answers, located, woken = asyncio.run(scenario())
        assert (info.name, info.partitions) == (unique_name, 2)
        bases = [b for a in answers for s in a.segments for b in s.base_offset]
        assert sorted(bases) == [0, 3, 5, 8, 10, 13, 15, 18]
        assert located.high_watermark[0] == 20
        first = located.batches(0)[0]
        assert (first.base_offset, first.length) == (3, 70)
        assert isinstance(located.errors[1], OffsetOutOfRange)
        assert len(woken.batches(0)) == 1  # data there: the long poll answers at once

        with pytest.raises(InvalidTopic):
            asyncio.run(client.create_topic("no spaces allowed", 1))
        with pytest.raises(UnknownTopicOrPartition):
            asyncio.run(client.describe_topic("missing-" + unique_name))
    finally:
        ray.kill(actor)
