"""Where the bucket is and how to reach it: one validated settings object for both sides."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")


class RetryPolicy(BaseModel):
    """Jittered exponential backoff for throttling, 5xx and network errors; never for 412."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(default=8, ge=1, le=100)
    initial_backoff: float = Field(default=0.1, gt=0, le=60)
    max_backoff: float = Field(default=10.0, gt=0, le=600)
    deadline: float = Field(default=60.0, gt=0, le=3600, description="seconds for all attempts")


class StoreConfig(BaseModel):
    """Settings of the S3-compatible store. Credentials left empty use the AWS chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str
    prefix: str = "edge-mailbox"
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = Field(default=None, repr=False)
    session_token: str | None = Field(default=None, repr=False)
    profile: str | None = None
    proxy: str | None = Field(default=None, description="HTTP(S) proxy URL for the bucket")
    addressing_style: str = Field(default="auto", pattern="^(auto|path|virtual)$")
    verify_tls: bool | str = Field(default=True, description="False, True or a CA bundle path")
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    read_timeout: float = Field(default=30.0, gt=0, le=3600)
    max_pool_connections: int = Field(default=20, ge=1, le=1000)
    retry: RetryPolicy = RetryPolicy()

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not 3 <= len(value) <= 63 or not set(value) <= _BUCKET_CHARS:
            raise ValueError(
                f"bucket name {value!r} is not a valid S3 bucket name "
                "(3-63 characters: lowercase letters, digits, '.', '-', '_')"
            )
        return value

    @field_validator("endpoint_url", "proxy")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials_pair(self) -> StoreConfig:
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("access_key_id and secret_access_key must be given together")
        return self
