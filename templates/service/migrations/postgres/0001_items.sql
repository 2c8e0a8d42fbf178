-- The @name@ service's example table.
CREATE TABLE @snake@_items (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    price BIGINT NOT NULL CHECK (price >= 0),
    created_at BIGINT NOT NULL
);
