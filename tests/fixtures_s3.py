"""A real S3 endpoint for tests: moto's server over HTTP on 127.0.0.1.

``moto.mock_aws`` patches botocore in one process only, and Ray workers are other processes,
so integration tests talk to ``moto.server.ThreadedMotoServer`` through ``endpoint_url``
(Litestream's ``etc/s3_mock.py`` does the same). moto 5.2.x honours ``If-None-Match: *`` on
PutObject (412 when the key exists), which the create-only contract needs.

Fake credentials are set in ``os.environ`` as soon as this plugin is imported (before any
fixture, so also before ``ray.init``): Ray workers inherit the environment of the process
that started Ray, and tests must never reach real AWS credentials.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

TEST_BUCKET = "ray-stream-test"
_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(_FAKE_AWS_ENV)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start one moto S3 server for the session; yield ``http://127.0.0.1:PORT``."""
    from moto.server import ThreadedMotoServer

    os.environ.update(_FAKE_AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """A store URL with a prefix no other test uses (the bucket is created on first use)."""
    prefix = "t" + uuid.uuid4().hex[:12]
    return f"s3://{TEST_BUCKET}/{prefix}?endpoint_url={s3_endpoint}&region=us-east-1"
