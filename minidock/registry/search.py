"""Search: `docker search`, over the v1 search API or, where a registry has none, its v2 catalog.

`GET /v1/search?q=<term>&n=<limit>` on the index (`index.docker.io` for docker.io, the registry
itself otherwise) answers `{"results": [{"name", "description", "star_count", "is_official",
"is_automated"}]}`. A plain distribution registry has no v1 API; its `GET /v2/_catalog` lists the
repositories, which are matched against the term here. A term `host/words` searches that host.
"""

import http.client
import json
import re
import urllib.parse

from minidock import errors, reference
from minidock.registry.endpoints import DEFAULT_INDEX_HOST, RegistryConfig
from minidock.registry.session import Session


def search(term, *, auth=None, config=None, limit=25):
    """Search a registry: `term` may start with a registry host (`localhost:5000/app`).

    Uses the v1 search API where the registry has one (Docker Hub), else lists the v2 catalog and
    keeps repositories whose name contains the term. Results use the v1.12+ keys."""
    config = config or RegistryConfig()
    registry, q = reference.split_domain(term) if "/" in term else (reference.DEFAULT_DOMAIN, term)
    if not q:
        raise errors.InvalidParameter("search term must not be empty")
    limit = int(limit or 25)
    if not 1 <= limit <= 100:
        raise errors.InvalidParameter(f"limit {limit} is outside the range of [1, 100]")
    # v1 search first.
    s1 = Session(registry, config=config, auth=auth)
    if registry == reference.DEFAULT_DOMAIN:
        s1.base, s1.verify = f"https://{DEFAULT_INDEX_HOST}", True
    v1_error = None
    try:
        if s1.base is None:
            s1.open()
        r = s1.request("GET", "/v1/search?" + urllib.parse.urlencode({"q": q, "n": limit}))
        with r:
            body = r.read()
        if r.status == 200:
            data = json.loads(body)
            return [_search_result(x) for x in (data.get("results") or [])][:limit]
        v1_error = f"/v1/search answered {r.status}"
    except (errors.MinidockError, OSError, ValueError, http.client.HTTPException) as e:
        v1_error = str(e)
        if isinstance(e, errors.Unavailable) and "--insecure-registry" in str(e):
            raise
    # Then the v2 catalog.
    s2 = Session(registry, config=config, auth=auth, scopes=["registry:catalog:*"])
    try:
        repos, path = [], "/v2/_catalog?n=1000"
        while path and len(repos) < 100000:
            r = s2.request("GET", path)
            s2.expect(r, (200,), "catalog")
            with r:
                data = json.loads(r.read())
            repos.extend(data.get("repositories") or [])
            link = r.headers.get("Link") or ""
            m = re.match(r"\s*<([^>]+)>", link)
            path = m.group(1) if m else None
    except errors.Unauthorized:
        raise
    except (errors.MinidockError, OSError, ValueError, http.client.HTTPException) as e:
        raise errors.Unavailable(f"registry {registry} supports neither search (/v1/search: {v1_error}) "
                                 f"nor catalog listing (/v2/_catalog: {e})")
    prefix = "" if registry == reference.DEFAULT_DOMAIN else registry + "/"
    hits = [_search_result({"name": prefix + name}) for name in repos if q.lower() in name.lower()]
    return hits[:limit]


def _search_result(x):
    return {
        "name": x.get("name", ""),
        "description": x.get("description") or "",
        "star_count": int(x.get("star_count") or 0),
        "is_official": bool(x.get("is_official")),
        "is_automated": bool(x.get("is_automated") or x.get("is_trusted")),
    }
