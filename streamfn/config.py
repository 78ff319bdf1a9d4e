"""Validated configuration of a stream function, with AWS's names, ranges and defaults.

The snake_case names are streamfn's; the PascalCase names of CreateEventSourceMapping are accepted as aliases so
an ESM definition copied from CloudFormation or SAM validates as is.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic.alias_generators import to_pascal

from streamfn.errors import ConfigError, StrictModel
from streamfn.filters.criteria import RecordFields, compile_criteria, criteria_of

INFINITE_RETRIES_WITH_DESTINATION = 10
"""Lambda: "When you configure both infinite retries and an on-failure destination, Lambda automatically applies
a maximum of 10 retry attempts."""

PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024
"""Lambda's synchronous invocation payload limit, which also caps a batch."""

KAFKA_DESTINATION = re.compile(r"kafka://[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,248}")
"""How Lambda's DestinationConfig names a Kafka topic (its API pattern, without a leading dot)."""


def http_url(value: str) -> str:
    """A validator's check of an http(s) URL with a host (a webhook, a queue, a registry)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError as error:
        raise ValueError(f"not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _aws_alias(name: str) -> AliasChoices:
    return AliasChoices(name, to_pascal(name))


class Backoff(StrictModel):
    """Capped exponential backoff with full jitter between attempts of a failing batch (not an AWS parameter)."""

    owner = "Backoff"

    initial_seconds: float = Field(0.5, gt=0, le=60)
    max_seconds: float = Field(30.0, gt=0, le=3600)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): uniform in [0, min(max, initial * 2^(attempt-1))]
        (tenacity's wait_random_exponential). One function for every retry of a batch: tenacity's loops take it as
        their wait, the loops that are not tenacity's (a held partition's rounds) call it directly."""
        return random.uniform(0, min(self.max_seconds, self.initial_seconds * 2.0 ** min(attempt - 1, 64)))


class FunctionConfig(StrictModel):
    """The event source mapping parameters of one function."""

    batch_size: int = Field(100, ge=1, le=10_000, validation_alias=_aws_alias("batch_size"))
    maximum_batching_window_in_seconds: float = Field(
        0, ge=0, le=300, validation_alias=_aws_alias("maximum_batching_window_in_seconds")
    )
    """Unless set, the source's default (its dialect's, `for_source`: Kafka 0.5 s, Kinesis and DynamoDB 0)."""
    timeout: float = Field(
        3.0,
        gt=0,
        le=900,
        validation_alias=_aws_alias("timeout"),
        description="Seconds one invocation may take (Lambda's function timeout, default 3).",
    )
    backoff: Backoff = Field(default_factory=Backoff)
    parallelization_factor: int = Field(1, ge=1, le=10, validation_alias=_aws_alias("parallelization_factor"))
    """Batches of one partition in flight at once, by key (Lambda offers it for Kinesis and DynamoDB Streams)."""
    maximum_retry_attempts: int = Field(-1, ge=-1, le=10_000, validation_alias=_aws_alias("maximum_retry_attempts"))
    """Retries after the first attempt; -1 retries for ever (Lambda's default)."""
    maximum_record_age_in_seconds: int = Field(
        -1, ge=-1, le=604_800, validation_alias=_aws_alias("maximum_record_age_in_seconds")
    )
    bisect_batch_on_function_error: bool = Field(False, validation_alias=_aws_alias("bisect_batch_on_function_error"))
    function_response_types: list[Literal["ReportBatchItemFailures"]] = Field(
        default_factory=list, max_length=1, validation_alias=_aws_alias("function_response_types")
    )
    filter_criteria: Any = Field(None, validation_alias=_aws_alias("filter_criteria"))
    """Lambda's FilterCriteria `{"Filters": [{"Pattern": "<json>"}]}`: checked here, compiled for the source's
    records by `for_source` (streamfn.filters.criteria.RecordFilter)."""
    value_model: type[BaseModel] | None = None
    """Native handlers: a pydantic model each value is validated into; a value that fails goes to on_failure as a
    DeserializationError with the validation message, and never reaches the handler (not an AWS parameter)."""
    on_failure: Any = Field(None, validation_alias=AliasChoices("on_failure", "OnFailure", "DestinationConfig"))
    """A destination (streamfn.failures.model.Destination) for records that still fail, e.g. KafkaTopic("dlq"), or as
    Lambda names one: "kafka://dlq", or DestinationConfig={"OnFailure": {"Destination": "kafka://dlq"}} as
    CloudFormation spells it (the source resolves the URI: a topic on its cluster, see app.py)."""
    enabled: bool = Field(True, validation_alias=_aws_alias("enabled"))
    """False: the function is declared (and validated) but not run: no poller reads its source (Lambda's disabled
    event source mapping; `Function(...)` outputs still invoke it, as a disabled mapping leaves the function)."""
    tumbling_window_in_seconds: int = Field(0, ge=0, le=900, validation_alias=_aws_alias("tumbling_window_in_seconds"))
    """Lambda-style handlers: aggregate in tumbling windows of this many seconds, with `state` carried between
    invocations and kept durable in the changelog (0: no window). Lambda offers it for Kinesis and DynamoDB."""
    window_idle_seconds: float = Field(120.0, gt=0, le=3600)
    """Windows of a partition without new records for this long close (Lambda waits up to 2 minutes)."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """exactly_once: every output stores the source offsets it covers with the results, in one transaction (Table),
    so a batch replayed after a crash is recognised and skipped; the source resumes from the stored offsets."""

    @field_validator("maximum_record_age_in_seconds")
    @classmethod
    def _record_age(cls, value: int) -> int:
        if value != -1 and value < 60:
            raise ValueError("must be -1 (no limit) or between 60 and 604800 seconds")
        return value

    @field_validator("filter_criteria")
    @classmethod
    def _filters(cls, value: Any) -> Any:
        return criteria_of(value)

    def for_source(self, defaults: Mapping[str, Any], fields: RecordFields | None) -> FunctionConfig:
        """The parameters as they apply to a function of a source whose dialect has these `defaults` (for what the
        user did not set) and whose records filter patterns see as `fields`; without a source (None), filter
        criteria have nothing to apply to."""
        update = {name: value for name, value in defaults.items() if name not in self.model_fields_set}
        if self.filter_criteria is not None:
            if fields is None:
                raise ConfigError("filter_criteria applies to the records of a source: the function has none")
            update["filter_criteria"] = compile_criteria(self.filter_criteria, fields)
        return self.model_copy(update=update) if update else self

    @field_validator("on_failure")
    @classmethod
    def _destination(cls, value: Any) -> Any:
        if isinstance(value, dict):  # DestinationConfig; Lambda takes no OnSuccess for event source mappings
            on_failure = value.get("OnFailure")
            if set(value) != {"OnFailure"} or not isinstance(on_failure, dict) or set(on_failure) != {"Destination"}:
                raise ValueError('must be {"OnFailure": {"Destination": "kafka://<topic>"}}')
            value = on_failure["Destination"]
        if isinstance(value, str):
            if not KAFKA_DESTINATION.fullmatch(value):
                raise ValueError(
                    "must be kafka://<topic> (a topic of the source's cluster, as Lambda names a Kafka destination); "
                    "other destinations (arn:...) are not served"
                )
            return value
        if value is not None and not callable(getattr(value, "open_destination", None)):
            raise ValueError("must be a destination such as KafkaTopic('name') or 'kafka://name'")
        return value

    @property
    def retry_limit(self) -> int | None:
        """Retries allowed, None for no limit. Infinite retries with a destination are capped at 10, as Lambda."""
        if self.maximum_retry_attempts >= 0:
            return self.maximum_retry_attempts
        return INFINITE_RETRIES_WITH_DESTINATION if self.on_failure is not None else None

    @property
    def reports_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types

    @field_validator(
        "batch_size",
        "maximum_batching_window_in_seconds",
        "timeout",
        "parallelization_factor",
        "maximum_retry_attempts",
        "maximum_record_age_in_seconds",
        "tumbling_window_in_seconds",
        "window_idle_seconds",
        mode="before",
    )
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        """pydantic takes True for 1; a bool given for a number is a mistake (AWS's API refuses it too)."""
        if isinstance(value, bool):
            raise ValueError("must be a number, not a bool")
        return value


def check_starting_timestamp(starting_position: str, timestamp: float | None) -> None:
    """Lambda's rule for every source's StartingPositionTimestamp: required with AT_TIMESTAMP and allowed only with
    it, in Unix seconds (a millisecond value would start thousands of years ahead). Raises ValueError (for a
    model validator)."""
    if (starting_position == "AT_TIMESTAMP") != (timestamp is not None):
        raise ValueError(
            "starting_position_timestamp (Unix seconds) is required with starting_position='AT_TIMESTAMP' "
            "and allowed only with it"
        )
    if timestamp is not None and timestamp > 1e11:
        raise ValueError("starting_position_timestamp must be Unix seconds, not milliseconds")
