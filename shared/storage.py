"""S3-compatible object storage (SeaweedFS, MinIO, AWS S3) through boto3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from shared.audio.codecs import CONTENT_TYPES
from shared.config import Settings
from shared.errors import StorageRejected, Unavailable


class Storage:
    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        *,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        public_endpoint_url: str = "",
    ):
        self.bucket = bucket
        self._client: Any = self._make_client(
            endpoint_url, access_key, secret_key, region, connect_timeout, read_timeout
        )
        # Signing needs no connection: a second client only changes the host the URLs name.
        self._presigner: Any = (
            self._make_client(public_endpoint_url, access_key, secret_key, region, connect_timeout, read_timeout)
            if public_endpoint_url
            else self._client
        )

    @staticmethod
    def _make_client(
        endpoint_url: str, access_key: str, secret_key: str, region: str, connect_timeout: float, read_timeout: float
    ) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                # The worker's own retry policy decides about longer outages.
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        return cls(
            settings.s3_endpoint_url,
            settings.s3_bucket,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_region,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )

    def ensure_bucket(self) -> None:
        with _unavailable_on_error():
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                self._client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, fmt: str = "") -> None:
        with _unavailable_on_error():
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=CONTENT_TYPES.get(fmt, "application/octet-stream")
            )

    def get(self, key: str) -> bytes:
        with _unavailable_on_error():
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body

    def open(self, key: str, chunk_bytes: int = 256 * 1024) -> StoredObject:
        """An object to stream: fetched chunk by chunk as it is read, never whole in memory. A missing object or
        an unreachable storage raises here, before the first byte; the caller closes it (iterating to the end
        does too)."""
        with _unavailable_on_error():
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        return StoredObject(response["Body"], int(response.get("ContentLength") or 0), chunk_bytes)

    def exists(self, key: str) -> bool:
        with _unavailable_on_error():
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def copy(self, source: str, key: str) -> None:
        """A server-side copy within the bucket: the bytes never pass through this process."""
        with _unavailable_on_error():
            self._client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source})

    def delete(self, key: str) -> None:
        with _unavailable_on_error():
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def list_keys(self, prefix: str = "") -> list[str]:
        with _unavailable_on_error():
            keys: list[str] = []
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            return keys

    def presigned_url(self, key: str, expires_s: int) -> str:
        url: str = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url

    def ping(self) -> None:
        with _unavailable_on_error():
            self._client.head_bucket(Bucket=self.bucket)


class StoredObject:
    """An object's body as it streams from storage: iterate for its chunks, `length` is its size in bytes."""

    def __init__(self, body: Any, length: int, chunk_bytes: int) -> None:
        self._body, self.length, self._chunk = body, length, chunk_bytes

    def __iter__(self) -> Iterator[bytes]:
        try:
            with _unavailable_on_error():
                yield from self._body.iter_chunks(self._chunk)
        finally:
            self.close()

    def close(self) -> None:
        self._body.close()


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn connection-level failures and 5xx answers into `Unavailable` so callers can retry or answer 503, and
    other refusals into `StorageRejected`. Lookups that expect a 404 catch `ClientError` inside the block."""
    try:
        yield
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500 or status in (0, 429):
            raise Unavailable(f"object storage error {status}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        raise StorageRejected(f"object storage refused the request ({status} {code})") from exc
    except (EndpointConnectionError, BotoCoreError) as exc:
        raise Unavailable(f"object storage unreachable: {type(exc).__name__}") from exc
