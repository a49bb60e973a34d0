-- A credential's kind is judged by the kinds' registry (homelab_ops/credentials/kinds, one module
-- each), which the settings and `creds add` validate through: a list here as well would make every
-- new kind a migration, and refused a kind the code knows (redis-password) until one was written.
ALTER TABLE homelab_ops.credential DROP CONSTRAINT IF EXISTS credential_kind_check;
ALTER TABLE homelab_ops.credential ADD CONSTRAINT credential_kind_named CHECK (kind ~ '^[a-z0-9][a-z0-9-]*$');
