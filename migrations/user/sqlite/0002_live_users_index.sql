-- The list query and its count read only live (not deleted) users in id order: counting
-- this small index is far cheaper than scanning every table row.
CREATE INDEX users_live_by_id ON users (id) WHERE deleted = 0;
