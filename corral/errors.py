"""The one error hierarchy of corral.

Every failure a user can see is a `CorralError` carrying an HTTP status and a user-facing
message. The server maps it to the wire in exactly one place (`corral.server.errors`), and the
client turns an error body back into the same class, so the CLI and the server share one
vocabulary:

    CorralError (500)
    ├── BadRequestError (400)
    │   ├── InvalidNameError          "invalid model name"
    │   ├── ModelfileError            "(line N): ..."
    │   ├── GGUFError                 truncated / corrupt / not GGUF
    │   └── DigestMismatchError
    ├── UnauthorizedError (401)
    ├── ForbiddenError (403)
    ├── NotFoundError (404)
    │   └── ModelNotFoundError
    ├── PayloadTooLargeError (413)
    ├── RateLimitedError (429)
    ├── RequestCanceledError (499)
    ├── RunnerStoppedError (500)
    ├── ServerBusyError (503)
    ├── ConnectError (503)            the client found no server at the host
    └── InsufficientStorageError (507)   disk full (ENOSPC/EDQUOT) while writing

`retry_after` (seconds, or None) is sent as `Retry-After` and read back by the client.
"""

from __future__ import annotations

import math


class CorralError(Exception):
    """An error with an HTTP status code and a message meant for the user."""

    status: int = 500
    retry_after: float | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class BadRequestError(CorralError):
    status = 400


class PromptTooLongError(BadRequestError):
    """A prompt that cannot be cut to fit the context window (it declares tools); `tokens` is its size."""

    def __init__(self, message: str, *, tokens: int) -> None:
        super().__init__(message)
        self.tokens = tokens


class InvalidNameError(BadRequestError):
    def __init__(self, message: str = "invalid model name") -> None:
        super().__init__(message)


class ModelfileError(BadRequestError):
    """A Modelfile that does not parse; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        text = f"(line {line}): {message}" if line is not None else message
        super().__init__(text)
        self.line = line
        self.detail = message


class GGUFError(BadRequestError):
    """A file that is not a readable GGUF (truncated, corrupt, wrong magic)."""


class DigestMismatchError(BadRequestError):
    pass


class UnauthorizedError(CorralError):
    status = 401


class ForbiddenError(CorralError):
    status = 403


class NotFoundError(CorralError):
    status = 404


class ModelNotFoundError(NotFoundError):
    """An unknown model; the message text follows the route (spec §1)."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"model '{name}' not found")
        self.name = name


class PayloadTooLargeError(CorralError):
    status = 413


class RateLimitedError(CorralError):
    status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after: float | None = retry_after


class RequestCanceledError(CorralError):
    status = 499

    def __init__(self, message: str = "request canceled") -> None:
        super().__init__(message)


class RunnerStoppedError(CorralError):
    status = 500

    def __init__(
        self,
        message: str = (
            "model runner has unexpectedly stopped, this may be due to resource limitations or an"
            " internal error, check corral server logs for details"
        ),
    ) -> None:
        super().__init__(message)


class ServerBusyError(CorralError):
    status = 503

    def __init__(
        self,
        message: str = "server busy, please try again.  maximum pending requests exceeded",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConnectError(CorralError):
    """No server answered at the configured host (raised by the client, never sent on the wire;
    not a `ServerBusyError`: retrying a busy server is right, retrying an absent one is not)."""

    status = 503


class InsufficientStorageError(CorralError):
    """The disk (or quota) filled up while writing; built by `corral.store.diskspace`."""

    status = 507


_BY_STATUS: dict[int, type[CorralError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
    499: RequestCanceledError,
    503: ServerBusyError,
    507: InsufficientStorageError,
}


def error_from_status(status: int, message: str, retry_after: float | None = None) -> CorralError:
    """Rebuild the most specific error class for a status (used by the client and the runner
    protocol); `retry_after` is the server's `Retry-After` in seconds, when it sent one."""
    cls = _BY_STATUS.get(status)
    if cls is RateLimitedError:
        return RateLimitedError(message, retry_after=1.0 if retry_after is None else retry_after)
    if cls is ServerBusyError:
        return ServerBusyError(message, retry_after=retry_after)
    err = CorralError(message, status=status) if cls is None else cls(message)
    err.retry_after = retry_after
    return err


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a `Retry-After` header given in seconds (an HTTP date or garbage gives None)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
