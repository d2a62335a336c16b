"""API backfill: history from the Jira and GitHub REST APIs as canonical events.

The same events, with the same ``event_id``, as the webhook path would have
produced for the same changes, so a webhook and a backfill of one change fold
once. Used once (``flowmetrics backfill``) and on a schedule
(``flowmetrics reconcile``) to catch webhooks that never arrived.

Layout (imports point inward):

- ``jira_mapping``, ``github_mapping`` — pure REST shape → canonical events;
- ``http`` — the rate-limit-aware client (``classify`` is the pure rule);
- ``auth`` — Jira Basic/PAT, GitHub token or GitHub App installation tokens;
- ``jira``, ``github`` — readers: pagination, per-item requests, mapping calls;
- ``cursors`` — where each source/scope is (``plan_run`` pure, ``CursorStore`` SQL);
- ``runner`` — one pass: publish a page, wait for acks, then move the cursor;
- ``progress`` — rich bar on a terminal, structured logs otherwise;
- ``command`` — CLI arguments and wiring from settings.

Errors: see :mod:`collectors.backfill.exceptions`.
"""
