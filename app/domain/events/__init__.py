"""A job's events, from the transition to the subscriber. Where each step lives:

- the transitions write status and output events in their own transaction (app/domain/transitions.py),
  stored by app/db/job_events.py (the log's table);
- log.py: progress events, coalesced and logged in batches; after a commit, every logged event is
  handed to the bus; a reconnecting client's missed events are replayed from the log;
- bus.py: the in-process fan-out to this replica's subscribers (bounded queues, `lagged` when full);
- relay.py: events logged by other replicas (PostgreSQL NOTIFY), onto this replica's bus;
- publish.py: what the dispatcher publishes about its jobs (progress, previews, finished counts);
- live.py: following one job for a stream: current state, missed events, then live ones, in order.

The streams themselves are doors: app/api/events_sse.py (SSE) and app/api/events_ws.py (WebSocket).
"""
