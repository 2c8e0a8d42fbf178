-- The @name@ service's example table.
CREATE TABLE @snake@_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    price INTEGER NOT NULL CHECK (price >= 0),
    created_at INTEGER NOT NULL
);
