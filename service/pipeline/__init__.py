"""The call: relay to a provider, its transport and circuit breakers, routing over deployments, the
response cache, parallel calls, idempotency and readiness."""
