"""The subscribe and publish webhooks: a backend's say on channel access.

``SUBSCRIBE_WEBHOOK_URL``
    Asked when a channel's rule is ``subscribe: webhook`` (and for ``presence`` on such a
    channel). ``PUBLISH_WEBHOOK_URL``
    Asked for every client publication that the channel's rule lets through (``publish: any``,
    ``authenticated``, ``owner``, ``claim``) and for ``publish: webhook`` channels, before
    anything is delivered: it may refuse or rewrite the publication.

Both get a signed POST (``WEBHOOK_SECRET``, as the chat/tool webhooks)::

    {"action": "subscribe" | "presence" | "publish", "channel": "…", "client_id": "…",
     "user_id": "…" | null, "client_type": "…" | null, "authenticated": true,
     "roles": ["…"], "data": {…}}                      # data: publish only

and answer ``200`` with JSON::

    {"allow": true}
    {"allow": true, "data": {…}}                       # publish: deliver this data instead
    {"allow": false, "reason": "not a member"}         # the client's error frame shows reason

Anything else refuses: no answer within ``CHANNEL_WEBHOOK_TIMEOUT`` seconds, the backend down,
a non-2xx status, or an answer not of that shape. The client is then told why in general
terms ("the subscribe webhook did not answer in time"); the details (status, error) go to the
``channel_webhook_failed`` log line, never to the client.

Use: ``decision = rules.decide(action, channel, identity)`` (server.channel_rules), then
``verdict = await hooks.resolve(action, decision, identity, client_id=…, channel=…)``: an
:class:`Allow` (its ``data``, when set, replaces the publication's) or a :class:`Deny`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from server.channel_rules import (
    FORBIDDEN,
    Action,
    Allow,
    AskWebhook,
    ChannelRule,
    Decision,
    Deny,
)
from server.logging_setup import url_for_logs
from server.metrics import CHANNEL_WEBHOOK
from server.webhooks import (
    BACKEND_TIMEOUT,
    BACKEND_UNAVAILABLE,
    BackendError,
    Webhooks,
)

if TYPE_CHECKING:
    import aiohttp

    from server.auth import Identity
    from server.config import Settings

log = structlog.get_logger("switchboard.channel_webhooks")

MAX_REASON = 500
_FAILURE_REASONS = {
    BACKEND_TIMEOUT: "did not answer in time",
    BACKEND_UNAVAILABLE: "is unavailable",
}


class ChannelWebhooks(Webhooks):
    """The subscribe/publish webhook client (``http`` is set at start-up by
    ``server.webhooks.webhooks_ctx``)."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession | None = None) -> None:
        super().__init__(settings, http, timeout=settings.channel_webhook_timeout)

    @property
    def configured(self) -> bool:
        return bool(self.settings.subscribe_webhook_url or self.settings.publish_webhook_url)

    def url_for(self, action: Action) -> str:
        return (self.settings.publish_webhook_url if action == "publish"
                else self.settings.subscribe_webhook_url)

    async def resolve(self, action: Action, decision: Decision, identity: Identity | None, *,
                      client_id: str, channel: str, data: dict[str, Any] | None = None,
                      client_type: str | None = None) -> Allow | Deny:
        """Turn :meth:`ChannelRules.decide`'s answer into a final one: a Deny stands; an
        AskWebhook asks the action's webhook; an Allow of a publication is reviewed by
        PUBLISH_WEBHOOK_URL when set. Never raises for a backend failure (that is a Deny)."""
        if isinstance(decision, Deny):
            return decision
        if isinstance(decision, Allow) and not (action == "publish" and self.url_for(action)):
            return decision
        rule = decision.rule
        if isinstance(decision, AskWebhook) and not self.url_for(action):
            # Start-up validation makes this unreachable; refuse rather than open the channel.
            return Deny(FORBIDDEN, f"the {_hook(action)} webhook is not configured")
        return await self.ask(action, identity, client_id=client_id, channel=channel,
                              data=data, client_type=client_type, rule=rule)

    async def ask(self, action: Action, identity: Identity | None, *, client_id: str,
                  channel: str, data: dict[str, Any] | None = None,
                  client_type: str | None = None,
                  rule: ChannelRule | None = None) -> Allow | Deny:
        """POST the question to the action's webhook and read its verdict."""
        url = self.url_for(action)
        body: dict[str, Any] = {
            "action": action, "channel": channel, "client_id": client_id,
            "user_id": identity.user_id if identity is not None else None,
            "client_type": client_type,
            "authenticated": bool(identity is not None and identity.authenticated),
            "roles": sorted(identity.roles) if identity is not None else [],
        }
        if action == "publish":
            body["data"] = data if data is not None else {}
        request_id = secrets.token_hex(8)
        try:
            async with self._post(url, body, client_id, request_id) as resp:
                await self._check_status(resp, f"{_hook(action)} webhook")
                reply = await self._read_json(resp)
            verdict = self._verdict(action, reply, rule)
        except BackendError as exc:
            CHANNEL_WEBHOOK.labels(action, "failed").inc()
            log.warning("channel_webhook_failed", action=action, channel=channel,
                        client_id=client_id, code=exc.code, error=exc.message,
                        backend=url_for_logs(url))
            reason = _FAILURE_REASONS.get(exc.code, "failed")
            return Deny(FORBIDDEN, f"the {_hook(action)} webhook {reason}")
        CHANNEL_WEBHOOK.labels(action, "allow" if isinstance(verdict, Allow) else "deny").inc()
        log.info("channel_webhook_answered", action=action, channel=channel,
                 client_id=client_id, allow=isinstance(verdict, Allow))
        return verdict

    def _verdict(self, action: Action, reply: Any, rule: ChannelRule | None) -> Allow | Deny:
        if not isinstance(reply, Mapping) or not isinstance(reply.get("allow"), bool):
            raise BackendError('answer must be a JSON object with a boolean "allow"',
                               code="backend_invalid_response")
        if not reply["allow"]:
            reason = reply.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                reason = f"refused by the {_hook(action)} webhook"
            return Deny(FORBIDDEN, reason[:MAX_REASON])
        rewritten = reply.get("data")
        if action != "publish" or rewritten is None:
            return Allow(rule)
        if not isinstance(rewritten, Mapping):
            raise BackendError('"data" must be a JSON object', code="backend_invalid_response")
        if len(orjson.dumps(rewritten)) > self.settings.max_message_size:
            raise BackendError("rewritten publication is larger than MAX_MESSAGE_SIZE",
                               code="backend_invalid_response")
        return Allow(rule, dict(rewritten))


def _hook(action: Action) -> str:
    return "publish" if action == "publish" else "subscribe"
