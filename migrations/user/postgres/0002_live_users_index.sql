-- The list query and its count read only live (not deleted) users in id order.
CREATE INDEX users_live_by_id ON users (id) WHERE deleted = 0;
