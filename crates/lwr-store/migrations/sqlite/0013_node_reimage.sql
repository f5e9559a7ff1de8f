-- lwr schema 10: a node draining for a reimage (`lwr nodes reimage`) rather than a reboot
-- (1): its heartbeat answer says so, and it runs its --reimage-command. Registering again
-- clears it with the draining state.
ALTER TABLE nodes ADD COLUMN reimage BIGINT NOT NULL DEFAULT 0;
