-- One CREATE DATABASE per service that make new-service added (run once, on the first start
-- of the postgres volume). user-srv's database is POSTGRES_DB.
SELECT 1;
