-- pgbench script of the "new app": it knows only users.display_name (readable through pgshift
-- from expand on).
\set id random(1, 1000)
BEGIN;
UPDATE users SET display_name = 'new ' || :id WHERE id = :id;
SELECT id, display_name, email FROM users WHERE id = :id;
END;
INSERT INTO users (display_name, email) VALUES ('new app ' || :client_id, 'new@example.com');
