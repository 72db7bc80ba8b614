"""Jobs: their state (the one writer of a job's status), batch settling, idempotency, the dedup cache and views."""
