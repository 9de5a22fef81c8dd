-- Applied event ids, one row per interception instead of one per event (the events of a request arrive
-- together, so one row, one index entry and one foreign-key check where there were four or five of each).
-- event_ids only grows; n_prev is its length before the last claim, so that claim's RETURNING can say which
-- ids it added (event_ids[n_prev + 1:]) under the row lock ON CONFLICT takes: concurrent claims of the same
-- event cannot both win.
CREATE TABLE usage_claims (
    interception_id text PRIMARY KEY
        REFERENCES interceptions (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    event_ids       text[] NOT NULL,
    n_prev          integer NOT NULL DEFAULT 0
);

-- processed_events is kept for budget replicas of the previous release during a rolling upgrade: what they
-- claim there is claimed here too (an id claimed here already makes their insert a no-op, i.e. a duplicate),
-- so old and new replicas never apply one event twice. Nothing of this release writes processed_events.
CREATE FUNCTION claim_processed_event() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO usage_claims (interception_id, event_ids) VALUES (NEW.interception_id, ARRAY[NEW.event_id])
    ON CONFLICT (interception_id) DO UPDATE
        SET n_prev = cardinality(usage_claims.event_ids), event_ids = usage_claims.event_ids || NEW.event_id
        WHERE NOT NEW.event_id = ANY (usage_claims.event_ids);
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
-- created before the copy, in the same transaction: its lock holds old replicas' inserts until both are done
CREATE TRIGGER processed_events_claim BEFORE INSERT ON processed_events
    FOR EACH ROW EXECUTE FUNCTION claim_processed_event();

INSERT INTO usage_claims (interception_id, event_ids)
SELECT interception_id, array_agg(event_id ORDER BY processed_at, event_id) FROM processed_events
GROUP BY interception_id;
