"""Amazon MSK IAM authentication: SASL/OAUTHBEARER with tokens from AWS's own signer package.

`aws-msk-iam-sasl-signer-python` (`pip install 'streamfn[msk]'`) signs a token with the credentials of the AWS
configuration chain (environment, profile, instance or task role); a token is valid for 15 minutes, so one is
reused until a minute before it expires and then a new one is signed, off the event loop (botocore is blocking).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.abc import AbstractTokenProvider

from streamfn.errors import ConfigError

REFRESH_BEFORE_MS = 60_000
"""A token is replaced this long before it expires, so a connection never presents one about to lapse."""


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(self, region: str, sign: Any) -> None:
        self.region = region
        self._sign = sign
        self._token: str | None = None
        self._expires_ms = 0
        self._signing = asyncio.Lock()

    @classmethod
    def for_region(cls, region: str | None) -> MskIamTokenProvider:
        """A provider signing for `region`, else the AWS configuration chain's region."""
        try:
            import botocore.session
            from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
        except ImportError:
            raise ConfigError(
                "KafkaConnection: sasl_mechanism AWS_MSK_IAM needs AWS's signer: pip install 'streamfn[msk]'"
            ) from None
        region = region or botocore.session.get_session().get_config_variable("region")
        if not region:
            raise ConfigError("KafkaConnection: sasl_mechanism AWS_MSK_IAM needs aws_region (or AWS_REGION)")
        return cls(region, MSKAuthTokenProvider.generate_auth_token)

    async def token(self) -> str:
        async with self._signing:
            if self._token is None or time.time() * 1000 >= self._expires_ms - REFRESH_BEFORE_MS:
                self._token, self._expires_ms = await asyncio.to_thread(self._sign, self.region)
            return self._token
