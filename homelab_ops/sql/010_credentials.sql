-- The credential store (homelab_ops.credentials). Values are Fernet tokens under the
-- master key; only their ciphertext is ever written here. The audit trail is
-- append-only, and that is enforced by the database rather than trusted to the code.

CREATE TABLE homelab_ops.credential (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    kind          text NOT NULL CHECK (kind IN ('postgres-role', 's3-access-key', 'generated', 'manual')),
    period        text NOT NULL,
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,   -- options that are not secret
    secret_params bytea,                                -- Fernet token of the secret options (an admin DSN)
    consumers     text[] NOT NULL DEFAULT '{}',
    description   text NOT NULL DEFAULT '',
    source        text NOT NULL DEFAULT 'cli' CHECK (source IN ('cli', 'settings')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Versions with stages as in AWS Secrets Manager. A version that leaves the
-- stages (deprecated) loses its ciphertext: retired secrets are not kept.
CREATE TABLE homelab_ops.credential_version (
    credential  text NOT NULL REFERENCES homelab_ops.credential (name),
    version     integer NOT NULL CHECK (version > 0),
    stage       text CHECK (stage IN ('pending', 'current', 'previous')),
    ciphertext  bytea,
    origin      text NOT NULL,                 -- rotation, set
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    promoted_at timestamptz,
    retired_at  timestamptz,
    PRIMARY KEY (credential, version),
    CHECK ((stage IS NULL) = (ciphertext IS NULL))
);
CREATE UNIQUE INDEX credential_version_one_per_stage
    ON homelab_ops.credential_version (credential, stage) WHERE stage IS NOT NULL;

-- A token of a known text under the master key: a wrong key is caught before it
-- writes anything.
CREATE TABLE homelab_ops.credential_keycheck (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    token      bytea NOT NULL,
    key_id     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rekeyed_at timestamptz
);

CREATE TABLE homelab_ops.credential_audit (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,                  -- dagster-run:<run id>, or cli:<os user>
    action     text NOT NULL,                  -- read, write, promote, rotate, step:<name>, define, rekey, init
    credential text,
    version    integer,
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'failed', 'denied')),
    detail     text NOT NULL DEFAULT ''        -- never a value
);
CREATE INDEX credential_audit_by_credential ON homelab_ops.credential_audit (credential, at);

CREATE FUNCTION homelab_ops.credential_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'homelab_ops.credential_audit is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER credential_audit_no_update_or_delete
    BEFORE UPDATE OR DELETE ON homelab_ops.credential_audit
    FOR EACH ROW EXECUTE FUNCTION homelab_ops.credential_audit_append_only();
CREATE TRIGGER credential_audit_no_truncate
    BEFORE TRUNCATE ON homelab_ops.credential_audit
    FOR EACH STATEMENT EXECUTE FUNCTION homelab_ops.credential_audit_append_only();

-- The role that runs the migrations is the application role: it keeps INSERT and
-- SELECT only. (A superuser ignores privileges; the triggers still hold for it.)
REVOKE UPDATE, DELETE, TRUNCATE ON homelab_ops.credential_audit FROM PUBLIC, CURRENT_USER;
