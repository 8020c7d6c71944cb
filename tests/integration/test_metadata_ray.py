"""MetadataActor as a real Ray actor: calls round-trip and errors keep their type."""

from __future__ import annotations

import pytest

from ray_stream.actors.metadata import MetadataActor
from ray_stream.config import Settings
from ray_stream.core.types import BatchEntry, CommitRequest
from ray_stream.errors import InvalidTopic, OffsetOutOfRange, UnknownTopicOrPartition


@pytest.mark.integration
def test_metadata_actor_under_ray(ray_session, tmp_path, unique_name):
    ray = ray_session
    settings = Settings(data_dir=str(tmp_path / "data"))
    actor = (
        ray.remote(num_cpus=0)(MetadataActor)
        .options(name=f"metadata-{unique_name}")
        .remote(settings)
    )
    try:
        info = ray.get(actor.create_topic.remote(unique_name, 2))
        assert (info.name, info.partitions) == (unique_name, 2)

        entries = (
            BatchEntry(unique_name, 1, 0, 50, 3, 10, 20),
            BatchEntry(unique_name, 1, 50, 70, 2, 30, 40),
        )
        refs = [
            actor.commit.remote(CommitRequest(f"segments/{i}.arrow", 120, entries))
            for i in range(4)
        ]
        results = ray.get(refs)
        assert sorted(r.base_offset for rs in results for r in rs) == [0, 3, 5, 8, 10, 13, 15, 18]

        located = ray.get(actor.locate.remote(unique_name, 1, 4, 1 << 20))
        assert located.high_watermark == 20
        assert located.batches[0].base_offset == 3
        assert located.batches[0].length == 70

        assert ray.get(actor.wait_for_data.remote([(unique_name, 1, 0)], 5.0)) is True

        with pytest.raises(InvalidTopic):
            ray.get(actor.create_topic.remote("no spaces allowed", 1))
        with pytest.raises(UnknownTopicOrPartition):
            ray.get(actor.describe_topic.remote("missing-" + unique_name))
        with pytest.raises(OffsetOutOfRange):
            ray.get(actor.locate.remote(unique_name, 1, 21, 100))
    finally:
        ray.kill(actor)
