-- The sample table of docker-compose.yml's workload, created directly in PostgreSQL (not
-- through pgshift) before the applications start. Idempotent: a restarted workload keeps the
-- table as it is, whatever phase the migration has reached (after complete, user_name is gone).
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    user_name text,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
SELECT NOT EXISTS (SELECT 1 FROM users) AS empty \gset
\if :empty
INSERT INTO users (user_name, email)
SELECT 'user ' || g, 'user' || g || '@example.com' FROM generate_series(1, 1000) g;
\endif
