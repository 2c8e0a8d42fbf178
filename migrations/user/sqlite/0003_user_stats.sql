-- The number of live (not deleted) users, kept by triggers inside the transaction of every
-- change, so a page reads its exact total from one row instead of counting the table on
-- every list call. SQLite skips its truncate shortcut on a table with a DELETE trigger, so
-- even `DELETE FROM users` keeps the count exact.
CREATE TABLE user_stats (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    live INTEGER NOT NULL
);
INSERT INTO user_stats (id, live) SELECT 1, COUNT(*) FROM users WHERE deleted = 0;

CREATE TRIGGER user_stats_insert AFTER INSERT ON users WHEN NEW.deleted = 0
BEGIN
    UPDATE user_stats SET live = live + 1 WHERE id = 1;
END;

CREATE TRIGGER user_stats_delete AFTER DELETE ON users WHEN OLD.deleted = 0
BEGIN
    UPDATE user_stats SET live = live - 1 WHERE id = 1;
END;

CREATE TRIGGER user_stats_update AFTER UPDATE OF deleted ON users
WHEN (OLD.deleted = 0) <> (NEW.deleted = 0)
BEGIN
    UPDATE user_stats SET live = live + (CASE WHEN NEW.deleted = 0 THEN 1 ELSE -1 END) WHERE id = 1;
END;
