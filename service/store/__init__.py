"""Storage: the database models and pool, migrations, the catalogue registry, the Redis cache and
redaction of stored bodies."""
