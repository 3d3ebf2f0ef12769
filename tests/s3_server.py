"""An S3 API on loopback for the storage tests: moto's server, in a thread of
the test process, on 127.0.0.1 and a port the system picks, started once per
module that uses the `s3_server` fixture (import it from here: no conftest).

It checks credentials as S3 does: an IAM user and its access key are made
first, then moto's authentication is switched on, so a wrong key or secret is
refused (InvalidAccessKeyId, SignatureDoesNotMatch) as a real store refuses it.

Nothing leaves the machine: while the server runs, the AWS_* variables point
at it (AWS_ENDPOINT_URL; the keys moto made for the user; us-east-1), the shared
config and credentials files point at nothing (a developer's ~/.aws is never
read), instance metadata is off (AWS_EC2_METADATA_DISABLED), and a name
lookup of any host other than loopback is refused (and fails the module).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
REGION = "us-east-1"
# Every AWS variable that could point the SDK elsewhere: removed while the server runs.
_FOREIGN = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT", "AWS_CA_BUNDLE",
)  # fmt: skip


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    reader_key: tuple[str, str]  # a user who may read and list, and not write
    refused: list[str]  # hosts other than loopback that something tried to look up (must stay empty)

    def client(self, **overrides: Any) -> Any:
        """A plain boto3 client on the server (with the good keys unless overridden)."""
        import boto3

        settings: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": REGION,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }
        return boto3.client("s3", **{**settings, **overrides})

    def new_bucket(self) -> str:
        name = f"bucket-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _loopback_only(real: Any, refused: list[str]) -> Any:
    """getaddrinfo for loopback only: any other host is refused, and noted (a library that swallows the
    error, as botocore's metadata fetcher would, still fails the module at teardown)."""

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            refused.append(str(name))
            raise socket.gaierror(socket.EAI_NONAME, f"the storage tests look up loopback only, not {name!r}")
        return real(host, *args, **kwargs)

    return getaddrinfo


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    nowhere = tmp_path_factory.mktemp("aws-config") / "absent"
    refused: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _loopback_only(socket.getaddrinfo, refused))
        for name in _FOREIGN:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_CONFIG_FILE", str(nowhere))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("AWS_REGION", REGION)
        patch.setenv("AWS_ACCESS_KEY_ID", "setup-only")  # the server accepts anything until authentication is on
        patch.setenv("AWS_SECRET_ACCESS_KEY", "setup-only")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            assert host == "127.0.0.1"
            endpoint = f"http://127.0.0.1:{port}"
            patch.setenv("AWS_ENDPOINT_URL", endpoint)
            access_key, secret_key = _make_user(endpoint, ["s3:*"])
            reader = _make_user(endpoint, ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"])
            patch.setenv("AWS_ACCESS_KEY_ID", access_key)
            patch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
            # From here on every request must be signed by that user's key.
            patch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
            patch.setattr(ActionAuthenticatorMixin, "request_count", 0)
            yield S3Server(endpoint, access_key, secret_key, reader, refused)
        finally:
            server.stop()
    assert refused == [], f"hosts other than loopback were looked up: {sorted(set(refused))}"


def _make_user(endpoint: str, actions: list[str]) -> tuple[str, str]:
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION)
    user = f"storage-tests-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
