"""Post a drift report to a webhook (Slack-style incoming hooks, alert managers, CI endpoints).

A failed post is reported, never raised: the drift verdict and exit code must not depend on
whether the alerting endpoint is up.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class WebhookResult:
    ok: bool
    status: int | None
    message: str


def post_json(url: str, payload: dict[str, Any], *, timeout: float = 10.0) -> WebhookResult:
    """POST `payload` as JSON to `url`; any failure comes back as `ok=False` with the reason."""
    if not url.startswith(("http://", "https://")):
        return WebhookResult(False, None, f"webhook URL must start with http:// or https://, got {url!r}")
    body = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "specialize-drift"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's URL
            return WebhookResult(True, response.status, f"posted to {url} ({response.status})")
    except urllib.error.HTTPError as exc:
        result = WebhookResult(False, exc.code, f"webhook {url} answered {exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        result = WebhookResult(False, None, f"webhook {url} failed: {reason}")
    log.warning(result.message)
    return result
