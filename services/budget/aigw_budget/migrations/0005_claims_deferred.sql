-- The batch consumer claims event ids before it writes the interception row they belong to, so that row is
-- written once, complete (not inserted bare and then updated): the foreign key is checked at commit instead.
ALTER TABLE processed_events ALTER CONSTRAINT processed_events_interception_id_fkey DEFERRABLE INITIALLY DEFERRED;
