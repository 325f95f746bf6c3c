-- pgbench script of the "old app": it knows only users.user_name.
\set id random(1, 1000)
BEGIN;
UPDATE users SET user_name = 'old ' || :id WHERE id = :id;
SELECT id, user_name, email FROM users WHERE id = :id;
END;
INSERT INTO users (user_name, email) VALUES ('old app ' || :client_id, 'old@example.com');
