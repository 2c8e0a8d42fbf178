-- Users (SQLite). Timestamps are unix seconds; `deleted` is a soft-delete flag (0/1).
CREATE TABLE users (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    mobile     TEXT    NOT NULL,
    password   TEXT    NOT NULL,
    nick_name  TEXT    NOT NULL DEFAULT '',
    birthday   INTEGER,
    gender     TEXT    NOT NULL DEFAULT 'male' CHECK (gender IN ('male', 'female')),
    role       INTEGER NOT NULL DEFAULT 1 CHECK (role IN (1, 2)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT users_mobile_key UNIQUE (mobile)
);
