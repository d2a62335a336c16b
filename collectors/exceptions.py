"""Errors of the collectors, each with the HTTP status it answers.

CollectorError
├── Unauthenticated      401  missing or wrong signature / token
├── PayloadTooLarge      413  body over the limit, or too many events
├── MalformedPayload     400  not JSON
├── UnprocessablePayload 422  JSON, but not what the endpoint accepts
└── NotDurable           503  the event could not be made durable; the sender should retry
"""

from __future__ import annotations


class CollectorError(Exception):
    status = 500
    title = "Collector error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Unauthenticated(CollectorError):
    status = 401
    title = "Unauthenticated"


class PayloadTooLarge(CollectorError):
    status = 413
    title = "Payload too large"


class MalformedPayload(CollectorError):
    status = 400
    title = "Malformed payload"


class UnprocessablePayload(CollectorError):
    status = 422
    title = "Unprocessable payload"


class NotDurable(CollectorError):
    status = 503
    title = "Not durable"
