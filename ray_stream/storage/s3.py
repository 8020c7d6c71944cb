"""An S3 ``ObjectStore`` over boto3: ``s3://bucket/prefix?endpoint_url=...&region=...``.

This is the only module that sees botocore; every botocore error is translated here
(STYLE.md §6, like httpx's ``map_httpcore_exceptions``):

* 404 ``NoSuchKey`` / ``NotFound`` -> ``NotFound``
* 412 ``PreconditionFailed``, 409 ``ConditionalRequestConflict`` -> ``PreconditionFailed``
* 5xx, ``SlowDown``/throttling, ``RequestTimeout``, connection errors, timeouts, truncated
  bodies -> ``StorageUnavailable``
* ``NoSuchBucket``, a bad bucket name, 403, missing credentials -> ``InvalidConfig``
* any other 4xx -> ``InvalidRequest`` (416 on ``get_range`` is "past the end": ``b""``)

Invariants:

* Keys live under the URL's prefix: key ``k`` of ``s3://b/p`` is object ``p/k`` in bucket
  ``b``; ``list`` strips the prefix again, so stores with different prefixes never see each
  other's keys.
* ``put(if_none_match=True)`` sends ``If-None-Match: *`` (S3 conditional writes, 2024), so
  the server, not this process, decides the single winner among racing creators.
* botocore retries (``standard`` mode, 3 attempts in total) happen inside one call. A
  retried create-only put whose first attempt landed sees 412: ``PreconditionFailed`` can
  therefore mean "you already won"; the manifest writer resolves that by reading back.
* The bucket is created on first use if missing (``create_bucket=false`` in the URL turns
  that off); ``BucketAlreadyOwnedByYou`` is success.
* The endpoint comes from the URL (or the constructor), never from ``os.environ`` here;
  credentials come from boto3's usual chain.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from ray_stream.errors import (
    InvalidConfig,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    RayStreamError,
    StorageUnavailable,
)
from ray_stream.storage.base import check_range, validate_key

__all__ = ["S3Store"]

_URL_OPTIONS = ("endpoint_url", "region", "create_bucket")
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_PRECONDITION = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
_AUTH = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}


def _client_error(exc: ClientError, what: str) -> RayStreamError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = f"{what}: S3 {status} {code} {error.get('Message', '')}".rstrip()
    if code == "NoSuchBucket":
        return InvalidConfig(f"{detail} (the bucket does not exist)")
    if code in ("InvalidBucketName", "BucketAlreadyExists"):
        return InvalidConfig(f"{detail} (choose another bucket in the store url)")
    if code in _NOT_FOUND or status == 404:
        return NotFound(detail)
    if code in _PRECONDITION or status == 412:
        return PreconditionFailed(detail)
    if status >= 500 or code in _TRANSIENT:
        return StorageUnavailable(detail)
    if code in _AUTH or status == 403:
        return InvalidConfig(f"{detail} (check the credentials and bucket policy)")
    return InvalidRequest(detail)


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    """Translate botocore errors raised inside the block into ray_stream errors."""
    try:
        yield
    except ClientError as exc:
        raise _client_error(exc, what) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise InvalidConfig(f"{what}: no usable AWS credentials ({exc})") from exc
    except BotoCoreError as exc:
        # EndpointConnectionError, Connect/ReadTimeoutError, ConnectionClosedError,
        # ResponseStreamingError/IncompleteReadError: the outcome is unknown, retry later.
        raise StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise InvalidConfig(f"s3 url option {name!r} must be true or false, got {raw!r}")


class S3Store:
    """Objects in one S3 bucket under one key prefix.

    Args:
        bucket: the bucket name.
        prefix: key prefix inside the bucket ("" for the bucket root).
        endpoint_url: S3-compatible endpoint (moto, MinIO); None for AWS.
        region: signing region; None lets boto3 choose.
        create_bucket: create the bucket on first use if it does not exist.
        url: the URL to report as ``self.url`` (defaults to one built from the above).
        connect_timeout_s / read_timeout_s: per-attempt socket timeouts.
        max_attempts: total attempts per request, first one included (botocore ``standard``).
        max_pool_connections: HTTP connections kept per store; enough for an agent's
            concurrent flushes and chunk reads (botocore's default of 10 is not).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = True,
        url: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        max_attempts: int = 3,
        max_pool_connections: int = 32,
    ) -> None:
        if not bucket:
            raise InvalidConfig("s3 store needs a bucket name (s3://<bucket>/<prefix>)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._root = f"{self.prefix}/" if self.prefix else ""
        self.url = url or f"s3://{bucket}/{self.prefix}"
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            # Custom endpoints (moto, MinIO, 127.0.0.1) rarely resolve virtual-host names.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        # A Session per store: boto3's default session is not thread-safe to create
        # clients from, and clients themselves are thread-safe.
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self._bucket_ready = not create_bucket
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """Open ``s3://bucket/prefix?endpoint_url=...&region=...&create_bucket=true``.

        Raises:
            InvalidConfig: no bucket, or an unknown/invalid query option (named).
        """
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidConfig(f"object store url {url!r} must look like s3://bucket/prefix")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - set(_URL_OPTIONS))
        if unknown:
            raise InvalidConfig(
                f"object store url {url!r} has unknown option(s) {unknown}; "
                f"accepted: {list(_URL_OPTIONS)}"
            )
        return cls(
            parts.netloc,
            parts.path,
            endpoint_url=options.get("endpoint_url") or None,
            region=options.get("region") or None,
            create_bucket=_parse_bool("create_bucket", options.get("create_bucket", "true")),
            url=url,
        )

    # -- helpers -------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + validate_key(key)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                with _translate(f"head bucket {self.bucket!r}"):
                    self._client.head_bucket(Bucket=self.bucket)
            except NotFound:
                self._create_bucket()
            except InvalidConfig:
                pass  # 403 on HeadBucket: object-level permissions may still suffice
            self._bucket_ready = True

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise _client_error(exc, f"create bucket {self.bucket!r}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"create bucket {self.bucket!r}: {exc}") from exc

    # -- ObjectStore ---------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview, *, if_none_match: bool = False) -> None:
        name = self._name(key)
        self._ensure_bucket()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": name, "Body": bytes(data)}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        with _translate(f"put {key!r} to {self.url}"):
            self._client.put_object(**kwargs)

    def get(self, key: str) -> bytes:
        name = self._name(key)
        self._ensure_bucket()
        with _translate(f"get {key!r} from {self.url}"):
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            return bytes(response["Body"].read())

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(key, start, length)
        if length == 0:
            self.size(key)  # NotFound for a missing key, as for any other range
            return b""
        name = self._name(key)
        self._ensure_bucket()
        what = f"get_range {key!r} [{start}, +{length}) from {self.url}"
        try:
            with _translate(what):
                response = self._client.get_object(
                    Bucket=self.bucket, Key=name, Range=f"bytes={start}-{start + length - 1}"
                )
                return bytes(response["Body"].read())
        except InvalidRequest as exc:
            # 416 InvalidRange: the object exists but is shorter than ``start``.
            if isinstance(exc.__cause__, ClientError) and (
                exc.__cause__.response.get("Error", {}).get("Code") == "InvalidRange"
            ):
                return b""
            raise

    def size(self, key: str) -> int:
        name = self._name(key)
        self._ensure_bucket()
        with _translate(f"size {key!r} in {self.url}"):
            response = self._client.head_object(Bucket=self.bucket, Key=name)
            return int(response["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        self._ensure_bucket()
        keys: list[str] = []
        with _translate(f"list {prefix!r} in {self.url}"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._root + prefix):
                keys.extend(obj["Key"][len(self._root) :] for obj in page.get("Contents", ()))
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._ensure_bucket()
        try:
            with _translate(f"delete {key!r} from {self.url}"):
                self._client.delete_object(Bucket=self.bucket, Key=name)
        except NotFound:
            return  # some S3-compatible servers answer 404; delete is idempotent

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
