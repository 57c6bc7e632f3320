-- Who may do what (README "Who may do what"): role grants on scopes, and API tokens for scripts.
-- A grant gives ROLE on SCOPE to SUBJECT (the authenticated subject: a JWT's `sub`, or the
-- subject an API token was made for). Scopes: '*', 'host:NAME', 'vm:PATTERN', 'pool:NAME'.
CREATE TABLE access_grants (
    id serial PRIMARY KEY,
    subject text NOT NULL,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    scope text NOT NULL,
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subject, role, scope)
);
CREATE INDEX access_grants_subject ON access_grants (subject);

-- An API token is `tkm_<id>_<secret>`; only the SHA-256 of the secret (32 random bytes) is kept.
CREATE TABLE api_tokens (
    id text PRIMARY KEY,
    subject text NOT NULL,
    secret_sha256 text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
