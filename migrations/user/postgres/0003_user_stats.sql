-- The number of live (not deleted) users, kept by a trigger inside the transaction of every
-- change, so a page reads its exact total from one row instead of counting the table on
-- every list call. Every insert and (un)delete updates this one row, so such writes queue
-- behind each other until commit: cheap at the rate users register, and the price of an
-- exact total without a scan. TRUNCATE bypasses row triggers: re-count after one.
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE user_stats (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    live BIGINT   NOT NULL
);
INSERT INTO user_stats (id, live) SELECT 1, COUNT(*) FROM users WHERE deleted = 0;

CREATE FUNCTION user_stats_follow() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta BIGINT := 0;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.deleted = 0 THEN
        delta := delta + 1;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.deleted = 0 THEN
        delta := delta - 1;
    END IF;
    IF delta <> 0 THEN
        UPDATE user_stats SET live = live + delta WHERE id = 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER user_stats_follow AFTER INSERT OR DELETE OR UPDATE OF deleted ON users
FOR EACH ROW EXECUTE FUNCTION user_stats_follow();
