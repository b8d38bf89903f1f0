"""The Docker Remote API: route tables grouped by resource, and the router that serves them.

Each resource module (`system`, `images`, `containers`, ...) exposes `ROUTES`, a flat list of
`(method, pattern, handler)`. Handlers are named after their route (`post_containers_start`), parse
their input from an `ApiRequest`, call one backend method, and return a response object from
`minidock.http`. Response shapes that differ between API versions are produced in `versions.py`.
"""
