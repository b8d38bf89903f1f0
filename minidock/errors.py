"""Error kinds, and the one place that turns them into HTTP.

Code anywhere in minidock raises one of these kinds with a message meant for the user. Handlers
never pick status codes for failures themselves: `status_for()` maps kinds to codes (moby calls
this errdefs + httpstatus), and the router renders every error as `{"message": ...}`.

A syscall failure is not one of these: it stays an `OSError` carrying errno and context, and is
wrapped into a kind only where the caller knows what it means to the user.
"""


class MinidockError(Exception):
    """Base of every error kind. `status` is its HTTP code."""
    status = 500

    def __init__(self, message, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra          # extra JSON fields for the body, rarely used


class InvalidParameter(MinidockError):   # the request is wrong: bad JSON, bad name, bad value
    status = 400


class Unauthorized(MinidockError):       # a registry refused the credentials
    status = 401


class Forbidden(MinidockError):          # allowed in general, not here (e.g. removing a running container)
    status = 403


class NotFound(MinidockError):           # no such container, image, volume, exec, route
    status = 404


class MethodNotAllowed(MinidockError):   # the path exists, the method does not
    status = 405


class NotAcceptable(MinidockError):      # v1.2's "impossible to attach (container not running)"
    status = 406


class RequestTimeout(MinidockError):    # the client stopped sending its request half-way
    status = 408


class Conflict(MinidockError):           # name in use, image used by a container, container paused
    status = 409


class PayloadTooLarge(MinidockError):    # a JSON body larger than we accept
    status = 413


class HeadersTooLarge(MinidockError):    # request headers over our limits
    status = 431


class NotModified(MinidockError):        # start a running container, stop a stopped one
    status = 304


class NotImplementedKind(MinidockError): # a documented feature this machine or build cannot do
    status = 501


class Unavailable(MinidockError):        # the kernel or a peer refused; says what to fix
    status = 503


class System(MinidockError):             # our fault, or the machine's
    status = 500


def status_for(exc):
    """The HTTP status for any exception: its kind's, or 500 for anything unexpected."""
    if isinstance(exc, MinidockError):
        return exc.status
    return 500


def body_for(exc):
    """The JSON-able body for an error response: always a `message`."""
    message = exc.message if isinstance(exc, MinidockError) else f"{type(exc).__name__}: {exc}"
    body = {"message": message}
    if isinstance(exc, MinidockError):
        body.update(exc.extra)
    return body
