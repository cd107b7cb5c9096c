-- Portcullis policy-sync: the source of truth.
-- Everything a filter needs (policies, schemas, entities, issuers, keys) lives in these tables;
-- triggers announce every committed change on the channel `portcullis_changed`, and every
-- published version on `portcullis_published`.

CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenants (id) VALUES ('default');

CREATE TABLE policies (
    tenant      text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          text NOT NULL CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
    text        text NOT NULL CHECK (length(text) BETWEEN 1 AND 1048576),
    enabled     boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);

CREATE TABLE schemas (
    tenant      text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    text        text NOT NULL CHECK (length(text) <= 4194304),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entities (
    tenant      text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    uid         text NOT NULL CHECK (length(uid) BETWEEN 1 AND 4096),
    entity      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, uid)
);

CREATE TABLE issuers (
    issuer          text PRIMARY KEY CHECK (length(issuer) BETWEEN 1 AND 2048),
    audiences       text[] NOT NULL DEFAULT '{}',
    jwks_uri        text CHECK (jwks_uri ~ '^https?://'),
    discovery_url   text CHECK (discovery_url ~ '^https?://'),
    min_refresh_s   integer NOT NULL DEFAULT 60 CHECK (min_refresh_s >= 1),
    max_refresh_s   integer NOT NULL DEFAULT 3600 CHECK (max_refresh_s >= min_refresh_s),
    max_staleness_s integer NOT NULL DEFAULT 86400 CHECK (max_staleness_s >= 1),
    -- Token settings handed to filters with the keys (required claims, max lifetime, ...).
    settings        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (jwks_uri IS NULL OR discovery_url IS NULL)
);

CREATE TABLE keys (
    issuer      text NOT NULL REFERENCES issuers (issuer) ON DELETE CASCADE,
    kid         text NOT NULL CHECK (length(kid) BETWEEN 1 AND 512),
    jwk         jsonb NOT NULL CHECK (jsonb_typeof(jwk) = 'object'),
    origin      text NOT NULL CHECK (origin IN ('uploaded', 'fetched')),
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, kid)
);

-- Fetch bookkeeping lives apart from `issuers` so that it does not trigger publishing.
CREATE TABLE issuer_fetch_state (
    issuer          text PRIMARY KEY REFERENCES issuers (issuer) ON DELETE CASCADE,
    last_attempt_at timestamptz,
    last_success_at timestamptz,
    last_error      text,
    next_fetch_at   timestamptz
);

-- Published versions: immutable. `source` is the whole source state at that version (every
-- tenant's policies, schema and entities), which `rollback` restores.
CREATE TABLE versions (
    version      bigint PRIMARY KEY CHECK (version > 0),
    published_at timestamptz NOT NULL DEFAULT now(),
    reason       text NOT NULL,
    rollback_of  bigint REFERENCES versions (version),
    source       jsonb NOT NULL
);

-- One signed document per tenant whose content changed at a version.
CREATE TABLE bundles (
    tenant      text NOT NULL,
    version     bigint NOT NULL REFERENCES versions (version),
    digest      text NOT NULL,
    payload     text NOT NULL,
    signature   text NOT NULL,
    key_id      text NOT NULL,
    PRIMARY KEY (tenant, version)
);

CREATE TABLE admin_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    role        text NOT NULL CHECK (role IN ('admin', 'filter')),
    -- SHA-256 of the token; the token itself (256 random bits) is shown once and never stored.
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Decision logs, one partition per day (created on demand, dropped after the retention).
CREATE TABLE decision_logs (
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    tenant      text NOT NULL,
    decision    text NOT NULL CHECK (decision IN ('allow', 'deny', 'unauthenticated', 'error')),
    principal   text,
    action      text,
    resource    text,
    policies    text[] NOT NULL DEFAULT '{}',
    version     bigint,
    dry_run     boolean NOT NULL DEFAULT false,
    filter_id   text,
    details     jsonb
) PARTITION BY RANGE (ts);

CREATE FUNCTION portcullis_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_changed', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_changed();
CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON policies
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_changed();
CREATE TRIGGER schemas_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON schemas
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_changed();
CREATE TRIGGER entities_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON entities
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_changed();
CREATE TRIGGER issuers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON issuers
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_changed();
CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_changed();

CREATE FUNCTION portcullis_notify_published() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_published', NEW.tenant || ' ' || NEW.version);
    RETURN NULL;
END $$;

CREATE TRIGGER bundle_published AFTER INSERT ON bundles
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_published();

-- Published versions are immutable.
CREATE FUNCTION portcullis_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'published versions are immutable';
END $$;
CREATE TRIGGER versions_immutable BEFORE UPDATE OR DELETE ON versions
    FOR EACH ROW EXECUTE FUNCTION portcullis_immutable();
CREATE TRIGGER bundles_immutable BEFORE UPDATE OR DELETE ON bundles
    FOR EACH ROW EXECUTE FUNCTION portcullis_immutable();

-- The partition of `decision_logs` for one day (UTC), created if missing.
CREATE FUNCTION portcullis_decision_partition(day date) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('portcullis_decision_partitions'));
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF decision_logs FOR VALUES FROM (%L) TO (%L)',
        'decision_logs_' || to_char(day, 'YYYYMMDD'),
        (day::timestamp AT TIME ZONE 'UTC'),
        ((day + 1)::timestamp AT TIME ZONE 'UTC'));
END $$;

-- Drops the daily partitions older than `keep_days` days; returns how many it dropped.
CREATE FUNCTION portcullis_drop_decision_partitions(keep_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    cutoff text := 'decision_logs_' || to_char((now() AT TIME ZONE 'UTC')::date - keep_days, 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('portcullis_decision_partitions'));
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'decision_logs' AND c.relname < cutoff
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;
